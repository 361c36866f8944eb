#!/bin/bash
# Runs INSIDE the UML guest: builds the IPVS test table with ipvsadm.
# Loopback VIPs (127.10.0.0/16, ::1) carry real traffic (tests/vm/guest/traffic.py);
# documentation-range VIPs on a dummy interface are table-only (the guest has no NIC).
set -eu
ip link add nnipvs0 type dummy
ip link set nnipvs0 up
ip addr add 198.51.100.1/24 dev nnipvs0
ip -6 addr add 2001:db8::1/64 dev nnipvs0 nodad
# IPVS creates conntrack entries for its connections (conntrack collector sees them)
sysctl -qw net.ipv4.vs.conntrack=1

set -x
# TCP rr, 3 NAT backends + a weight-0 backend (never scheduled)
ipvsadm -A -t 127.10.0.1:80 -s rr
ipvsadm -a -t 127.10.0.1:80 -r 127.20.0.1:8080 -m -w 1
ipvsadm -a -t 127.10.0.1:80 -r 127.20.0.2:8080 -m -w 1
ipvsadm -a -t 127.10.0.1:80 -r 127.20.0.3:8080 -m -w 1
ipvsadm -a -t 127.10.0.1:80 -r 127.20.0.4:8080 -m -w 0
# TCP wrr 3:1
ipvsadm -A -t 127.10.0.2:443 -s wrr
ipvsadm -a -t 127.10.0.2:443 -r 127.20.0.1:8443 -m -w 3
ipvsadm -a -t 127.10.0.2:443 -r 127.20.0.2:8443 -m -w 1
# TCP sh (sh-port) with persistence 60 s, mask /24
ipvsadm -A -t 127.10.0.3:8000 -s sh -b sh-port -p 60 -M 255.255.255.0
ipvsadm -a -t 127.10.0.3:8000 -r 127.20.0.1:8080 -m -w 2
ipvsadm -a -t 127.10.0.3:8000 -r 127.20.0.2:8080 -m -w 1
# UDP rr
ipvsadm -A -u 127.10.0.1:53 -s rr
ipvsadm -a -u 127.10.0.1:53 -r 127.20.0.1:5353 -m -w 1
ipvsadm -a -u 127.10.0.1:53 -r 127.20.0.2:5353 -m -w 1
# SCTP rr
ipvsadm -A --sctp-service 127.10.0.5:3868 -s rr
ipvsadm -a --sctp-service 127.10.0.5:3868 -r 127.20.0.1:3868 -m -w 1
ipvsadm -a --sctp-service 127.10.0.5:3868 -r 127.20.0.2:3868 -m -w 1
# fwmark 1, IPv4, wlc (clients set SO_MARK=1: the UML kernel has no nftables ip family)
ipvsadm -A -f 1 -s wlc
ipvsadm -a -f 1 -r 127.20.0.1:8080 -m -w 1
ipvsadm -a -f 1 -r 127.20.0.2:8080 -m -w 2
# IPv6 TCP on ::1
ipvsadm -A -t '[::1]:80' -s rr
ipvsadm -a -t '[::1]:80' -r '[::1]:8081' -m -w 1
ipvsadm -a -t '[::1]:80' -r '[::1]:8082' -m -w 2
# fwmark 2, IPv6, rr with persistence 30 s / prefix 64
ipvsadm -A -f 2 -6 -s rr -p 30 -M 64
ipvsadm -a -f 2 -6 -r '[::1]:8083' -m -w 1
# table-only: DR (with thresholds) and tunnels (ipip, gue) + weight 0
ipvsadm -A -t 198.51.100.10:25 -s wlc
ipvsadm -a -t 198.51.100.10:25 -r 198.51.100.20:25 -g -w 5 -x 100 -y 10
ipvsadm -a -t 198.51.100.10:25 -r 198.51.100.21:25 -i -w 0
ipvsadm -a -t 198.51.100.10:25 -r 198.51.100.22:25 -i -w 2 --tun-type gue --tun-port 6080
# table-only: IPv6 UDP, sh, one-packet scheduling
ipvsadm -A -u '[2001:db8::10]:53' -s sh -o
ipvsadm -a -u '[2001:db8::10]:53' -r '[2001:db8::20]:53' -m -w 1
# table-only: IPv6 fwmark with a DR backend
ipvsadm -A -f 3 -6 -s lc
ipvsadm -a -f 3 -6 -r '[2001:db8::30]:0' -g -w 1
# a service whose backends are all gone
ipvsadm -A -t 127.10.0.9:9999 -s rr
set +x
