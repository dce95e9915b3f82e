#!/bin/sh
# Tests/guest/fileops.sh: file-operation checks run inside a guest (busybox sh) on a mounted share.
#
# usage: fileops.sh MOUNTPOINT
# environment (guest-init.sh sets these from the kernel command line):
#   PVFS_QUOTA      expected quota of the share in bytes; empty = skip the df/statfs and EDQUOT checks
#   PVFS_QUOTA_ERR  errno expected when writing past it: EDQUOT (default; what pvfsd must return)
#                   or ENOSPC (a plain size-limited filesystem, used to prove the check with diod)
#   PVFS_SKIP       comma-separated check names to skip (e.g. "xattr,mknod")
#   PVFS_LARGE_MIB  size of the large-file check in MiB (default 16)
#   PVFS_UID        uid/gid used for the non-root checks (default 1000)
#   PVFS_READDIR    number of files the readdir check creates (default 300)
#
# Each check runs in a subshell inside its own fresh directory MOUNTPOINT/pvfs-fileops/<name>
# and prints exactly one result line (lib/results.sh):  PVFS-TEST <name> ok|fail|skip <detail>
# Errno checks use /bin/pvfs-guest-helper (a static helper; see helper/pvfs-guest-helper.c),
# which prints "ERR <ENAME> ..." on failure; without it those checks report skip.
#
# On the way out it writes MOUNTPOINT/pvfs-fileops/MANIFEST (sha256 of kept files) and
# META (owner, mode, size, type per kept path) so the host can compare the served tree.

MNT=${1:?usage: fileops.sh MOUNTPOINT}
ROOT=$MNT/pvfs-fileops
H=/bin/pvfs-guest-helper
U=${PVFS_UID:-1000}
LARGE=${PVFS_LARGE_MIB:-16}
NDIR=${PVFS_READDIR:-300}
QUOTA=${PVFS_QUOTA:-}
QUOTA_ERR=${PVFS_QUOTA_ERR:-EDQUOT}
case $QUOTA_ERR in
ENOSPC) QUOTA_MSG="No space left on device" ;;
*) QUOTA_ERR=EDQUOT QUOTA_MSG="Disk quota exceeded" ;;
esac
SKIP=${PVFS_SKIP:-}
[ -x $H ] || H=""

# ------------------------------------------------------------------ check framework

. /lib/pvfs/results.sh

uptime_s() { cut -d' ' -f1 /proc/uptime; }
secs_since() { echo "$(uptime_s) - $1" | bc; }

# Inside a check: die MSG (fail), skip MSG, note MSG (detail printed with ok).
die() { echo "$*" >/tmp/fileops.detail; exit 1; }
skip() { echo "$*" >/tmp/fileops.detail; exit 77; }
note() { echo "$*" >/tmp/fileops.detail; }

# eq WHAT GOT WANT
eq() { [ "$2" = "$3" ] || die "$1: got '$2', want '$3'"; }
# must CMD...: the command must succeed
must() { out=$("$@" 2>&1) || die "'$*' failed: $(echo "$out" | tail -1)"; }
# mustfail PATTERN CMD...: the command must fail with output matching PATTERN
mustfail() {
    pat=$1; shift
    if out=$("$@" 2>&1); then die "'$*' succeeded, expected failure ($pat)"; fi
    echo "$out" | grep -q "$pat" || die "'$*': got '$(echo "$out" | tail -1)', want '$pat'"
}
need_helper() { [ -n "$H" ] || skip "no pvfs-guest-helper in the image"; }
# need_user: the unprivileged user must be able to run programs at all
need_user() {
    out=$($H runas "$U" "$U" $H open / r 2>&1)
    [ "$out" = OK ] || die "cannot run as uid $U: $out"
}
# hok ARGS: helper call must print OK
hok() { out=$($H "$@" 2>&1); [ "$out" = OK ] || die "helper $*: $out"; }
# herr ENAME[|ENAME2] ARGS: helper call must fail with one of the errno names
herr() {
    want=$1; shift
    out=$($H "$@" 2>&1)
    got=$(echo "$out" | sed -n 's/^\(.* \)\{0,1\}ERR \([A-Z0-9?]*\).*/\2/p')
    case "|$want|" in *"|$got|"*) [ -n "$got" ] && return 0 ;; esac
    die "helper $*: got '$out', want ERR $want"
}
# asuser CMD...: run as the unprivileged test user
asuser() { $H runas "$U" "$U" "$@"; }
st() { stat -c "$1" "$2" 2>&1; }
dropc() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
# Read in 1 MiB blocks: busybox sha256sum reads 4 KiB at a time, which without a page cache
# (9p's default cache=none) is one 9P request per 4 KiB, slow where requests are slow (nested Xen).
sha() { dd if="$1" bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1; }

skipped() { case ",$SKIP," in *",$1,"*) return 0 ;; esac; return 1; }

NOK=0 NFAIL=0 NSKIP=0
check() {
    name=$1
    if skipped "$name"; then marker "$name" skip pvfs.skip; NSKIP=$((NSKIP + 1)); return; fi
    rm -f /tmp/fileops.detail
    if ! mkdir "$ROOT/$name" 2>/tmp/fileops.out; then
        marker "$name" fail "mkdir $ROOT/$name: $(cat /tmp/fileops.out)"; NFAIL=$((NFAIL + 1)); return
    fi
    t0=$(uptime_s)
    (cd "$ROOT/$name" && set -u && "check_$name") >/tmp/fileops.out 2>&1
    rc=$?
    dt=$(secs_since "$t0")
    detail=$(cat /tmp/fileops.detail 2>/dev/null)
    case $rc in
    0) marker "$name" ok "${dt}s $detail"; NOK=$((NOK + 1)) ;;
    77) marker "$name" skip "$detail"; NSKIP=$((NSKIP + 1)) ;;
    *)
        [ -n "$detail" ] || detail="exit $rc: $(tail -1 /tmp/fileops.out)"
        marker "$name" fail "$detail"; NFAIL=$((NFAIL + 1))
        ;;
    esac
}

# ------------------------------------------------------------------ checks

check_create() {
    : >a
    [ -f a ] || die "a not created"
    eq "size of a" "$(st %s a)" 0
    must touch b
    [ -f b ] || die "touch did not create b"
    [ -n "$H" ] || return 0
    herr EEXIST open a x
    hok open c x
    [ -f c ] || die "O_EXCL create did not create c"
}

check_write_read() {
    dd if=/dev/urandom of=/tmp/r64 bs=4096 count=16 2>/dev/null
    cp /tmp/r64 f || die "cp to share failed"
    want=$(sha /tmp/r64)
    dropc
    eq "sha256 of f" "$(sha f)" "$want"
    eq "size of f" "$(st %s f)" 65536
    printf 'hello pvfs\n' >g
    eq "content of g" "$(cat g)" "hello pvfs"
    rm -f /tmp/r64
}

check_append() {
    printf 'abc' >f
    printf 'def' >>f
    printf 'ghi' >>f
    eq content "$(cat f)" abcdefghi
    eq size "$(st %s f)" 9
}

check_overwrite() {
    printf 'abcdef' >f
    printf 'XY' | dd of=f bs=1 seek=2 conv=notrunc 2>/dev/null
    eq content "$(cat f)" abXYef
    printf 'Z' | dd of=f bs=1 seek=10 conv=notrunc 2>/dev/null
    eq "size after write past end" "$(st %s f)" 11
    eq "hole reads as zeros" "$(dd if=f bs=1 skip=6 count=4 2>/dev/null | od -An -tx1 | tr -d ' \n')" 00000000
}

check_truncate() {
    printf '0123456789' >f
    must truncate -s 4 f
    eq "after shrink" "$(cat f)" 0123
    must truncate -s 100000 f
    eq "size after grow" "$(st %s f)" 100000
    eq "grown part is zeros" "$(tail -c 99996 f | tr -d '\000' | wc -c)" 0
    must truncate -s 0 f
    eq "size after truncate to 0" "$(st %s f)" 0
    printf 'xyz' >f
    : >f
    eq "size after O_TRUNC" "$(st %s f)" 0
}

check_rename() {
    echo one >a
    must mv a b
    [ ! -e a ] || die "a still exists after rename"
    eq "b" "$(cat b)" one
    echo two >c
    echo three >d
    must mv -f c d
    [ ! -e c ] || die "c still exists after rename over d"
    eq "d after rename over" "$(cat d)" two
    mkdir -p d1/sub
    echo x >d1/sub/f
    must mv d1 d2
    [ ! -e d1 ] || die "d1 still exists"
    eq "d2/sub/f" "$(cat d2/sub/f)" x
    mkdir x y
    echo z >x/f
    must mv x/f y/g
    eq "cross-directory rename" "$(cat y/g)" z
    [ -n "$H" ] || { note "errno cases skipped (no helper)"; return 0; }
    mkdir empty
    hok rename d2 empty
    [ ! -e d2 ] || die "d2 still exists after rename over empty dir"
    eq "empty/sub/f" "$(cat empty/sub/f)" x
    mkdir full src
    : >full/x
    herr "ENOTEMPTY|EEXIST" rename src full
    : >file1
    herr EISDIR rename file1 full
    herr ENOTDIR rename src file1
    herr ENOENT rename missing whatever
    herr EINVAL rename src src/inside
}

check_hardlink() {
    echo data >a
    must ln a b
    eq "link count of a" "$(st %h a)" 2
    eq "link count of b" "$(st %h b)" 2
    eq "same inode" "$(st %i b)" "$(st %i a)"
    echo more >>b
    eq "a after writing b" "$(cat a | tr '\n' ' ')" "data more "
    must ln a c
    eq "link count after second link" "$(st %h a)" 3
    rm a
    [ ! -e a ] || die "a still exists"
    eq "link count after unlink" "$(st %h b)" 2
    rm c
    eq "link count after second unlink" "$(st %h b)" 1
    eq "b content" "$(cat b | tr '\n' ' ')" "data more "
    [ -n "$H" ] || return 0
    mkdir d
    herr EPERM link d dlink
    herr EEXIST link b b
}

check_symlink() {
    echo tgt >target
    must ln -s target l
    eq readlink "$(readlink l)" target
    eq "type" "$(st %F l)" "symbolic link"
    eq "lstat size" "$(st %s l)" 6
    eq "read through link" "$(cat l)" tgt
    must ln -s /nonexistent/path dangling
    eq "dangling readlink" "$(readlink dangling)" /nonexistent/path
    [ -L dangling ] && [ ! -e dangling ] || die "dangling symlink misreported"
    mkdir d
    must ln -s d ld
    : >ld/f
    [ -f d/f ] || die "create through directory symlink failed"
    long=$(printf '%0200d' 0 | tr 0 x)/$(printf '%0200d' 0 | tr 0 y)
    must ln -s "$long" longlink
    eq "long readlink" "$(readlink longlink)" "$long"
}

check_chmod() {
    : >f
    for m in 600 644 755 4755 2755 1777 444 0; do
        must chmod "$m" f
        eq "mode after chmod $m" "$(st %a f)" "$m"
    done
    mkdir d
    must chmod 1777 d
    eq "dir mode" "$(st %a d)" 1777
    must chmod 700 d
    eq "dir mode" "$(st %a d)" 700
    eq "file type" "$(st %F f)" "regular empty file"
}

check_chown() {
    : >f
    must chown "$U:$U" f
    eq "owner" "$(st %u:%g f)" "$U:$U"
    must chown "0:$U" f
    eq "owner" "$(st %u:%g f)" "0:$U"
    must chown 0:0 f
    must ln -s f l
    must chown -h "$U:$U" l
    eq "symlink owner (lchown)" "$(st %u:%g l)" "$U:$U"
    eq "target owner unchanged" "$(st %u:%g f)" "0:0"
    mkdir d
    must chown "$U:$U" d
    eq "dir owner" "$(st %u:%g d)" "$U:$U"
}

check_chown_clears_suid() {
    : >f
    must chmod 4755 f
    must chown "$U" f
    eq "mode after chown of a setuid file" "$(st %a f)" 755
}

check_mkdir_rmdir() {
    must mkdir -p a/b/c
    [ -d a/b/c ] || die "a/b/c missing"
    eq "type" "$(st %F a)" directory
    must rmdir a/b/c
    must rmdir a/b
    must rmdir a
    [ ! -e a ] || die "a still exists"
    [ -n "$H" ] || return 0
    hok mkdir m 0700
    eq "mkdir mode" "$(st %a m)" 700
    herr EEXIST mkdir m 0755
    : >m/x
    herr "ENOTEMPTY|EEXIST" rmdir m
    herr ENOENT rmdir nothere
    : >file
    herr ENOTDIR rmdir file
    herr ENOTDIR mkdir file/sub 0755
}

check_readdir() {
    i=0
    while [ $i -lt "$NDIR" ]; do : >"f$i"; i=$((i + 1)); done
    # List once per step: every ls stats each entry, which is slow over some transports.
    ls -a >/tmp/readdir.list
    eq "entries with . and .." "$(wc -l </tmp/readdir.list)" $((NDIR + 2))
    grep -qx . /tmp/readdir.list && grep -qx .. /tmp/readdir.list || die "no . or .. entry"
    eq "entries named f*" "$(grep -c '^f[0-9]*$' /tmp/readdir.list)" "$NDIR"
    long=$(printf '%0255d' 0 | tr 0 n)
    : >"$long"
    : >"with space"
    : >"ünïcödé"
    ls >/tmp/readdir.list
    eq "entries after odd names" "$(wc -l </tmp/readdir.list)" $((NDIR + 3))
    grep -qx "$long" /tmp/readdir.list || die "255-byte name not listed"
    grep -qx "with space" /tmp/readdir.list || die "'with space' not listed"
    # busybox ls masks non-ASCII bytes; find prints names as they are
    [ "$(find . -maxdepth 1 -name 'ü*')" = "./ünïcödé" ] || die "UTF-8 name not listed byte for byte"
    rm f1*
    gone=$(grep -c '^f1[0-9]*$' /tmp/readdir.list)
    eq "entries after rm f1*" "$(ls | wc -l)" $((NDIR + 3 - gone))
    [ -n "$H" ] || return 0
    herr ENAMETOOLONG open "${long}n" c
    note "$NDIR files"
}

check_errors() {
    mustfail "No such file or directory" cat missing
    mustfail "No such file or directory" stat missing
    : >file
    [ -n "$H" ] || { note "errno cases skipped (no helper)"; return 0; }
    herr ENOENT open missing r
    herr ENOENT unlink missing
    herr ENOENT open missing/x c
    herr ENOTDIR open file/x r
    mkdir d
    herr EISDIR open d w
    herr "EISDIR|EPERM" unlink d
}

check_permissions() {
    need_helper
    need_user
    mkdir rootdir
    chmod 755 rootdir
    herr EACCES runas "$U" "$U" $H open rootdir/x c
    echo secret >rootdir/secret
    chmod 600 rootdir/secret
    herr EACCES runas "$U" "$U" $H open rootdir/secret r
    mustfail "Permission denied" asuser cat rootdir/secret
    chmod 644 rootdir/secret
    out=$(asuser $H open rootdir/secret r)
    eq "read 0644 as user" "$out" OK
    herr EACCES runas "$U" "$U" $H open rootdir/secret w
    mustfail "Operation not permitted" asuser chmod 777 rootdir/secret
    mkdir userdir
    chown "$U:$U" userdir
    out=$(asuser $H open userdir/mine x)
    eq "create in own dir" "$out" OK
    eq "owner of file created by user" "$(st %u:%g userdir/mine)" "$U:$U"
    asuser sh -c 'echo hi > userdir/f2' || die "user write failed"
    eq "user-written content" "$(cat userdir/f2)" hi
    out=$(asuser $H mkdir userdir/sub 0755)
    eq "mkdir as user" "$out" OK
    eq "owner of dir created by user" "$(st %u:%g userdir/sub)" "$U:$U"
    out=$(asuser $H unlink userdir/mine)
    eq "unlink as user" "$out" OK
    mkdir sticky
    chmod 1777 sticky
    : >sticky/rootfile
    herr "EPERM|EACCES" runas "$U" "$U" $H unlink sticky/rootfile
    out=$(asuser $H open sticky/userfile x)
    eq "create in sticky dir" "$out" OK
    mkdir nox
    : >nox/f
    chmod 700 nox
    herr EACCES runas "$U" "$U" $H open nox/f r
}

check_mknod() {
    must mkfifo p
    eq "fifo type" "$(st %F p)" fifo
    must mknod c c 1 5
    eq "char dev type" "$(st %F c)" "character special file"
    eq "char dev numbers" "$(st %t,%T c)" 1,5
    must mknod b b 7 0
    eq "block dev type" "$(st %F b)" "block special file"
    eq "block dev numbers" "$(st %t,%T b)" 7,0
    (echo through-fifo >p) &
    eq "fifo data" "$(cat p)" through-fifo
    wait
    [ "$(head -c 4 c | od -An -tx1 | tr -d ' \n')" = 00000000 ] || die "char device 1,5 does not read zeros"
}

check_xattr() {
    need_helper
    : >f
    out=$($H setxattr f user.pvfs.test hello)
    case $out in "ERR EOPNOTSUPP"*) die "user xattrs not supported: $out" ;; esac
    eq "setxattr" "$out" OK
    eq "getxattr" "$($H getxattr f user.pvfs.test)" hello
    hok setxattr f user.pvfs.test replaced
    eq "getxattr after replace" "$($H getxattr f user.pvfs.test)" replaced
    big=$(printf '%04000d' 7)
    hok setxattr f user.pvfs.big "$big"
    eq "4000-byte value" "$($H getxattr f user.pvfs.big)" "$big"
    $H listxattr f | grep -qx user.pvfs.test || die "listxattr: $($H listxattr f | tr '\n' ' ')"
    $H listxattr f | grep -qx user.pvfs.big || die "listxattr lacks user.pvfs.big"
    hok removexattr f user.pvfs.test
    herr ENODATA getxattr f user.pvfs.test
    herr ENODATA removexattr f user.pvfs.test
    mkdir d
    hok setxattr d user.pvfs.dir yes
    eq "dir xattr" "$($H getxattr d user.pvfs.dir)" yes
}

check_times() {
    : >f
    if [ -n "$H" ]; then
        hok utime f 1000000000
        eq "mtime after utimensat" "$(st %Y f)" 1000000000
    fi
    must touch -d '2001-02-03 04:05:06' f
    eq "mtime after touch -d" "$(st %Y f)" 981173106
    echo x >>f
    [ "$(st %Y f)" -gt 981173106 ] || die "mtime not updated by a write"
}

check_unlinked_open() {
    echo keep >f
    exec 3<f
    rm f
    [ ! -e f ] || die "f still exists"
    eq "read after unlink" "$(cat <&3)" keep
    exec 3<&-
    exec 4>g
    rm g
    echo more >&4 || die "write to unlinked file failed"
    exec 4>&-
}

check_large_file() {
    dd if=/dev/urandom of=/tmp/large bs=1M count="$LARGE" 2>/dev/null || die "no room for $LARGE MiB in the guest"
    want=$(sha /tmp/large)
    t=$(uptime_s)
    dd if=/tmp/large of=big bs=1M 2>/tmp/dd.err || die "write: $(tail -1 /tmp/dd.err)"
    sync
    tw=$(secs_since "$t")
    rm -f /tmp/large
    dropc
    t=$(uptime_s)
    got=$(sha big)
    tr=$(secs_since "$t")
    eq "sha256 of ${LARGE} MiB file" "$got" "$want"
    eq "size" "$(st %s big)" $((LARGE * 1048576))
    note "${LARGE} MiB: write ${tw}s read ${tr}s"
}

check_df() {
    [ -n "$QUOTA" ] || skip "no pvfs.quota given"
    need_helper
    set -- $($H statfs .)
    bsize=$1 blocks=$2
    total=$((bsize * blocks))
    tol=$((QUOTA / 100))
    [ "$tol" -ge "$bsize" ] || tol=$bsize
    diff=$((total - QUOTA))
    [ "$diff" -lt 0 ] && diff=$((-diff))
    [ "$diff" -le "$tol" ] || die "statfs total $total bytes (bsize $bsize blocks $blocks), want $QUOTA"
    dfk=$(df -k . | tail -1 | awk '{print $2}')
    want=$((QUOTA / 1024))
    d=$((dfk - want))
    [ "$d" -lt 0 ] && d=$((-d))
    [ "$d" -le $((tol / 1024 + 1)) ] || die "df -k size $dfk KiB, want $want"
    note "df: $(df -k . | tail -1 | awk '{print $2" KiB total, "$3" used, "$4" avail"}')"
}

check_quota() {
    [ -n "$QUOTA" ] || skip "no pvfs.quota given"
    need_helper
    set -- $($H statfs .)
    avail=$(($1 * $4))
    [ "$avail" -le $((256 * 1048576)) ] || die "quota leaves $avail bytes free; use a quota of at most 256 MiB for this check"
    count=$((avail / 1048576 + 2))
    if dd if=/dev/zero of=fill bs=1M count=$count 2>/tmp/dd.err; then
        die "dd of $count MiB with $avail bytes free succeeded; want $QUOTA_MSG"
    fi
    grep -q "$QUOTA_MSG" /tmp/dd.err || die "dd failed with '$(tail -1 /tmp/dd.err)', want $QUOTA_MSG"
    wrote=$(st %s fill)
    out=$($H write more 1048576)
    case $out in *"ERR $QUOTA_ERR"*) ;; *) die "helper write past quota: '$out', want $QUOTA_ERR" ;; esac
    rm -f fill more
    sync
    set -- $($H statfs .)
    after=$(($1 * $4))
    [ "$after" -ge $((avail - 1048576)) ] || die "space not returned after rm: $after bytes free, had $avail"
    out=$($H write again 1048576)
    eq "write after freeing space" "$out" "1048576 OK"
    rm -f again
    note "$QUOTA_ERR after $wrote bytes with $avail free"
}

# ------------------------------------------------------------------ run

rm -rf "$ROOT"
if ! mkdir "$ROOT"; then
    marker fileops-setup fail "cannot create $ROOT"
    exit 1
fi
echo "PVFS-INFO fileops on $MNT quota=${QUOTA:-none} ($QUOTA_ERR) skip=${SKIP:-none} helper=${H:-none}"
umask 022
for c in create write_read append overwrite truncate rename hardlink symlink chmod chown \
    chown_clears_suid mkdir_rmdir readdir errors permissions mknod xattr times unlinked_open \
    large_file df quota; do
    check "$c"
done

# Let the host compare what it serves with what the guest saw.
(cd "$ROOT" && for p in write_read/f write_read/g append/f overwrite/f large_file/big hardlink/b; do
    [ -f "$p" ] && echo "$(sha "$p")  $p"
done >MANIFEST 2>/dev/null)
(cd "$ROOT" && for p in chown/f chown/d chmod/d hardlink/b symlink/l mknod/c mknod/p permissions/userdir/f2; do
    [ -e "$p" ] || [ -L "$p" ] && stat -c '%n %u:%g %a %s %F' "$p"
done >META 2>/dev/null)
sync
echo "PVFS-INFO fileops ok=$NOK fail=$NFAIL skip=$NSKIP"
