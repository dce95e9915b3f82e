#!/bin/sh
# /init of the test domUs. The role comes from the kernel command line (pvfsrole=):
#   main    mounts the pvfs share, lists, stats, reads; then follows commands dom0 writes to
#           data/cmd (recheck, stale, poweroff)
#   churn   mounts and reads in a loop until dom0 destroys the domain mid-session
#   hostile runs hostile-frontend, a misbehaving 9pfs frontend in userspace
# Markers go to the console (hvc0), which xenconsoled logs in dom0.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ROLE=$(sed -n 's/.*pvfsrole=\([a-z]*\).*/\1/p' /proc/cmdline)
t() { echo "DOMU-$ROLE[$(cut -d' ' -f1 /proc/uptime)] $*"; }
t "init start"
for m in $(cat /modules/order); do insmod /modules/$m || t "insmod $m FAILED"; done
phase() { xenstore-write data/phase "$1" || t "cannot write data/phase"; }
cmd() { xenstore-read data/cmd 2>/dev/null; }

if [ "$ROLE" = hostile ]; then
  mkdir -p /proc/xen
  /bin/hostile-frontend
  t "hostile-frontend exit $?"
  while true; do sleep 5; done
fi

mkdir -p /mnt
if mount -t 9p -o trans=xen,version=9p2000.L pvfs-root /mnt; then
  t "MARK mount ok"
else
  t "MARK mount FAILED"
  phase mount-failed
  while true; do sleep 5; done
fi

check() {
  t "MARK ls: $(ls -a /mnt | tr '\n' ' ')"
  t "MARK stat: $(stat -c '%n size=%s mode=%a type=%F' /mnt/hello.txt)"
  t "MARK stat-root: $(stat -c 'type=%F mode=%a' /mnt)"
  t "MARK cat: $(cat /mnt/hello.txt)"
  t "MARK whoami: $(cat /mnt/whoami)"
  t "MARK statfs: $(stat -f -c 'type=%T blocks=%b' /mnt)"
  if sh -c 'echo x > /mnt/new' 2>/tmp/err; then t "MARK write unexpectedly ok"; else t "MARK write refused: $(cat /tmp/err)"; fi
}

if [ "$ROLE" = churn ]; then
  t "MARK whoami: $(cat /mnt/whoami)"
  phase busy
  n=0
  while true; do
    cat /mnt/hello.txt > /dev/null; ls /mnt > /dev/null; stat /mnt/whoami > /dev/null
    n=$((n + 1))
    [ $((n % 50)) -eq 0 ] && t "churn $n"
  done
fi

check
phase mounted
while true; do
  case "$(cmd)" in
    recheck)
      xenstore-write data/cmd none
      check
      phase rechecked ;;
    stale)
      xenstore-write data/cmd none
      start=$(cut -d' ' -f1 /proc/uptime)
      out=$(timeout 60 ls /mnt 2>&1); rc=$?
      t "MARK stale-ls rc=$rc after $(awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$start" 'BEGIN{print a-b}')s: $out"
      out=$(timeout 60 cat /mnt/hello.txt 2>&1); rc=$?
      t "MARK stale-cat rc=$rc: $out"
      if timeout 60 umount /mnt; then t "MARK umount ok"; else t "MARK umount FAILED"; fi
      phase unmounted ;;
    poweroff)
      t "poweroff"
      poweroff -f ;;
  esac
  sleep 1
done
