#!/bin/sh
# Tests/guest/fixture-init.sh: /init of the guest of run-9p-fixture.sh (busybox sh). Mounts the
# 9P2000.L server of a Swift test (the socket transport serving a fixture VM) over TCP and
# exercises it the way programs do; the test then reads, through the engine, what the guest did.
# One result line per step, PVFS-TEST-DONE at the end (lib/results.sh). Parameters come from
# the kernel command line (p9port=, p9aname=, p9opts=).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod /modules/$m.ko 2>/dev/null; done
for arg in $(cat /proc/cmdline); do
  case $arg in
    p9port=*) PORT=${arg#p9port=} ;;
    p9aname=*) ANAME=${arg#p9aname=} ;;
    p9opts=*) OPTS=${arg#p9opts=} ;;
  esac
done
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

. /lib/pvfs/results.sh
check() {
  n=$1; shift
  if out=$("$@" 2>&1); then marker "$n" ok ""; else marker "$n" fail "$(echo "$out" | head -c 300 | tr '\n' ' ')"; fi
}
expect() {
  n=$1; want=$2; shift 2
  got=$("$@" 2>&1)
  if [ "$got" = "$want" ]; then marker "$n" ok ""; else marker "$n" fail "want [$want] got [$(echo "$got" | head -c 300 | tr '\n' ' ')]"; fi
}

M=/mnt/vm
mkdir -p $M
# locktimeout=1: a lock the server answers BLOCKED is asked for again after 1 s, not 30.
OPTIONS="trans=tcp,port=$PORT,version=9p2000.L,aname=$ANAME,locktimeout=1${OPTS:+,$OPTS}"
echo "mounting with $OPTIONS"
check mount mount -t 9p -o "$OPTIONS" 10.0.2.2 $M
grep -q " $M " /proc/mounts || dmesg | tail -20
expect template-read template-host cat $M/etc/hostname
check create sh -c "echo hello > $M/new.txt"
expect read-back hello cat $M/new.txt
check append sh -c "echo world >> $M/new.txt"
expect read-appended "hello
world" cat $M/new.txt
expect size 12 stat -c %s $M/new.txt
check overwrite-template sh -c "echo guest-host > $M/etc/hostname"
expect template-copied-up guest-host cat $M/etc/hostname
check mkdir-p mkdir -p $M/a/b/c
expect list c ls $M/a/b
check rename mv $M/new.txt $M/a/b/moved.txt
expect renamed-away "" sh -c "ls $M | grep -x new.txt"
check rename-over sh -c "echo x > $M/a/over && mv $M/a/over $M/a/b/moved.txt"
expect renamed-over x cat $M/a/b/moved.txt
check hardlink ln $M/a/b/moved.txt $M/a/hard
expect link-count 2 stat -c %h $M/a/hard
check symlink ln -s b/moved.txt $M/a/sym
expect readlink b/moved.txt readlink $M/a/sym
expect follow-symlink x cat $M/a/sym
check chmod chmod 640 $M/a/hard
expect mode 640 stat -c %a $M/a/b/moved.txt
check chown chown 1000:1000 $M/a/hard
expect owner "1000 1000" stat -c "%u %g" $M/a/hard
check set-mtime touch -d "2020-01-02 03:04:05" $M/a/hard
expect mtime 1577934245 stat -c %Y $M/a/hard
check truncate truncate -s 100000 $M/a/hard
expect truncated 100000 stat -c %s $M/a/hard
check random-data dd if=/dev/urandom of=/tmp/rand bs=1M count=8
check write-large cp /tmp/rand $M/rand
check read-large cmp /tmp/rand $M/rand
check copy-template-file cp $M/big $M/big-copy
check compare-copy cmp $M/big $M/big-copy
check many-files sh -c "mkdir $M/many && for i in \$(seq 1 600); do : > $M/many/file-\$i; done"
expect list-many 600 sh -c "ls $M/many | wc -l"
check remove-tree rm -r $M/many
check mkfifo mkfifo $M/fifo
expect fifo-type "fifo" stat -c %F $M/fifo
check mknod mknod $M/null c 1 3
expect device-type "character special file" stat -c %F $M/null
expect device-number "1,3" stat -c "%t,%T" $M/null
check statfs df $M
check rmdir-not-empty sh -c "! rmdir $M/a 2>/dev/null"
check unlink rm $M/a/sym
if [ -x /usr/bin/setfattr ]; then
  check xattr-set setfattr -n user.color -v blue $M/a/hard
  expect xattr-get blue getfattr --absolute-names --only-values -n user.color $M/a/hard
  expect xattr-list "user.color" sh -c "getfattr --absolute-names -d $M/a/hard | grep -o '^user.color'"
  check xattr-remove setfattr -x user.color $M/a/hard
  check xattr-gone sh -c "! getfattr -n user.color $M/a/hard 2>/dev/null"
fi
# Holders run in the background with their output closed, or check() would wait for them.
check flock-held sh -c "(flock $M/a/hard sleep 3 >/dev/null 2>&1 &) ; sleep 1; ! flock -n $M/a/hard true"
check flock-wait flock $M/a/hard true
expect open-unlinked data sh -c "echo data > $M/ou && exec 3<$M/ou && rm $M/ou && cat <&3"
check shared-dir sh -c "mkdir $M/tmp && chmod 1777 $M/tmp"
check user-create su user -c "echo mine > $M/tmp/u"
expect user-owner "1000" stat -c %u $M/tmp/u
check user-denied sh -c "! su user -c 'echo x > $M/etc/hostname' 2>/dev/null"
check find sh -c "find $M > /dev/null"
# Several guest processes at once: the server runs their requests concurrently.
check parallel-writers sh -c "for i in 1 2 3 4; do (mkdir $M/p\$i && for j in \$(seq 1 40); do echo \$i-\$j > $M/p\$i/f\$j && cat $M/p\$i/f\$j > /dev/null; done) & done; wait"
expect parallel-files 160 sh -c "cat $M/p*/f* | wc -l"
check parallel-readers sh -c "for i in 1 2 3 4; do cmp $M/big $M/big-copy & done; wait"
check parallel-mixed sh -c "(cp $M/rand $M/rand2) & (find $M/p1 $M/p2 > /dev/null) & (ls -lR $M/a > /dev/null) & wait; cmp $M/rand $M/rand2"
# A second mount of the same VM is a second 9P session: it sees the first one's changes, and
# locks conflict between them on the server (not in the guest's VFS, which keeps them apart).
M2=/mnt/vm2
mkdir -p $M2
check second-mount mount -t 9p -o "$OPTIONS" 10.0.2.2 $M2
check cross-write sh -c "echo shared > $M/cross && sync"
expect cross-read shared cat $M2/cross
check cross-lock-held sh -c "(flock $M/cross sleep 6 >/dev/null 2>&1 &) ; sleep 1; ! flock -n $M2/cross true"
# flock -w times out with SIGALRM, which interrupts the guest's wait between BLOCKED retries.
check cross-lock-timeout sh -c "! flock -w 1 $M2/cross true"
check cross-lock-wait flock -w 20 $M2/cross true
check cross-lock-free flock -n $M/cross true
check second-umount umount $M2
check copy-tree cp -a $M/a $M/a2
expect copied-symlink-tree x cat $M/a2/b/moved.txt
check sync sync
check umount umount $M
check remount mount -t 9p -o "$OPTIONS" 10.0.2.2 $M
expect persisted x cat $M/a/b/moved.txt
expect persisted-host guest-host cat $M/etc/hostname
check final-umount umount $M
marker_done
poweroff -f
