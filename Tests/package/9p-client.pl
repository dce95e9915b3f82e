#!/usr/bin/perl
# Tests/package/9p-client.pl SOCKET VM SECONDS LOG: a 9P2000.L client that stays connected while
# the package is upgraded. It attaches to VM over the Unix socket, then sends Tgetattr every
# 0.1 s for SECONDS, logging progress to LOG, and ends with "done ok=N bad=M". Perl because the
# Debian base system has it (perl-base, without Time::HiRes) and no other scripting language.
use strict;
use warnings;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);

my ($path, $vm, $seconds, $log) = @ARGV;
open(my $out, '>', $log) or die "$log: $!";
$out->autoflush(1);
my $socket = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path) or die "connect $path: $!";

sub text { pack('v', length $_[0]) . $_[0] }
sub message { my ($type, $tag, $body) = @_; pack('VCv', length($body) + 7, $type, $tag) . $body }
sub read_exactly {
    my $n = shift;
    my $bytes = '';
    while (length $bytes < $n) {
        my $got = sysread($socket, $bytes, $n - length $bytes, length $bytes);
        die "read: " . (defined $got ? "end of stream" : $!) . "\n" unless $got;
    }
    return $bytes;
}
sub call {   # the reply's type
    syswrite($socket, $_[0]) == length $_[0] or die "write: $!\n";
    my $size = unpack('V', read_exactly(4));
    return unpack('C', read_exactly($size - 4));
}

call(message(100, 0xffff, pack('V', 65536) . text('9P2000.L'))) == 101 or die "Tversion refused\n";
call(message(104, 1, pack('VV', 0, 0xffffffff) . text('') . text($vm) . pack('V', 0))) == 105 or die "Tattach refused\n";
print $out "attached\n";
my ($ok, $bad) = (0, 0);
my $end = time + $seconds;
while (time < $end) {
    my $type = eval { call(message(24, 2, pack('V', 0) . pack('VV', 0x3fff, 0))) };
    if (defined $type && $type == 25) {
        $ok++;
        print $out "ok $ok\n" if $ok % 50 == 0;
    } else {
        $bad++;
        print $out "error: " . ($@ || "reply type $type") . "\n";
        last;
    }
    select(undef, undef, undef, 0.1);
}
print $out "done ok=$ok bad=$bad\n";
