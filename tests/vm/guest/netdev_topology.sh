#!/bin/bash
# INSIDE the UML guest (modules: uml.TUNNEL_MODULES): the tunnel topology of
# tests/vm/test_netdev_tunnels_uml.py and of the captured fixture links_uml_tunnels.*.
# No network card: dummy devices are the underlays.  Expected headroom by design:
#   *0 names ........ 0     tunnel at the kernel's own default MTU over a 1500 underlay
#   *neg names ...... -50   created over d1550 (kernel default MTU), then d1550 shrinks to 1500
#   iibig, g6big .... -20, -52  an MTU of 1500 set over a 1500 underlay (ip tunnels allow it)
#   gnl3 ............ 14    Geneve without inner Ethernet: the kernel's default keeps 14 spare
#   gn9 ............. 7450  Geneve at 1500 over d9000 (found by the route to its remote)
#   gnx ............. -56515  metadata-mode Geneve: the kernel gives it its max MTU 65465;
#                           no address, so IPv4 and the default route (d9000)
#   fallback devices  7500  tunl0, gre0, gretap0, sit0, ip6tnl0, ip6gre0 (remote any, no dev)
#                           sized for 1500 by the kernel, default routes on d9000
# The ifindexes are deterministic for a fresh boot with the same module list.
# ip6 tunnels get a local address: only then (IP6_TNL_F_CAP_XMIT) does the kernel size them
# from the route to the remote; without one they keep 1500 minus their overhead.
set -euo pipefail
x() { echo "+ $*"; "$@"; }
# IPv6 addresses without DAD or router solicitations (no packets move the counters)
for k in accept_dad router_solicitations; do
    sysctl -qw net.ipv6.conf.all.$k=0 net.ipv6.conf.default.$k=0
done
sysctl -qw net.ipv6.conf.all.dad_transmits=0 net.ipv6.conf.default.dad_transmits=0

# underlays
x ip link add d1500 type dummy
x ip link add d1550 mtu 1550 type dummy
x ip link add d9000 mtu 9000 type dummy
n=1
for d in d1500 d1550 d9000; do
    x ip link set "$d" up
    x ip addr add "10.$n.0.1/24" dev "$d"
    x ip addr add "fd0$n::1/64" dev "$d" nodad
    n=$((n + 1))
done
x ip route add default dev d9000
x ip -6 route add default dev d9000

# headroom 0: the kernel's default MTU over d1500 (bound with dev, or found by route)
x ip link add vx0 type vxlan id 1 remote 10.1.0.2 dev d1500 dstport 4789
x ip link add vx60 type vxlan id 2 remote fd01::2 dev d1500 dstport 4790
x ip link add gn0 type geneve id 3 remote 10.1.0.3
x ip link add gn60 type geneve id 4 remote fd01::3
x ip link add ii0 type ipip local 10.1.0.1 remote 10.1.0.4 dev d1500
x ip link add iir0 type ipip remote 10.3.0.4          # routed: d9000, default MTU 8980
x ip link add gr0 type gre remote 10.1.0.5 dev d1500
x ip link add grk0 type gre remote 10.1.0.6 key 7 csum seq dev d1500
x ip link add gt0 type gretap remote 10.1.0.7 dev d1500
x ip link add gtk0 type gretap remote 10.1.0.8 okey 9 dev d1500
x ip link add g60 type ip6gre remote fd01::5 local fd01::1 dev d1500
x ip link add g6n0 type ip6gre remote fd01::6 local fd01::1 encaplimit none dev d1500
x ip link add g6t0 type ip6gretap remote fd01::7 local fd01::1 dev d1500
x ip link add g6tn0 type ip6gretap remote fd01::8 local fd01::1 encaplimit none okey 3 dev d1500
x ip link add st0 type sit remote 10.1.0.9 dev d1500
x ip link add t60 type ip6tnl remote fd01::9 local fd01::1 dev d1500
x ip link add t6n0 type ip6tnl remote fd01::a local fd01::1 encaplimit none dev d1500
x ip link add t6l0 type ip6tnl remote fd01::b local fd01::1 encaplimit 0 dev d1500   # limit 0: option still sent

# where the table and the kernel's default differ
x ip link add gnl3 type geneve id 5 remote 10.1.0.10 innerprotoinherit
# positive headroom over the 9000 underlay
x ip link add gn9 mtu 1500 type geneve id 6 remote 10.3.0.6
x ip link add gnx type geneve external dstport 6082   # metadata mode: no address, default route

# negative, the way it happens on nodes: created over a larger underlay, which then shrinks
x ip link add vxneg type vxlan id 7 remote 10.2.0.2 dev d1550 dstport 4791
x ip link add gnneg type geneve id 8 remote 10.2.0.3
x ip link add gnneg6 type geneve id 9 remote fd02::3
x ip link add iineg type ipip remote 10.2.0.4 dev d1550
x ip link add grneg type gre remote 10.2.0.5 dev d1550
x ip link add gtneg type gretap remote 10.2.0.6 dev d1550
x ip link add g6neg type ip6gre remote fd02::6 local fd02::1 dev d1550
x ip link add stneg type sit remote 10.2.0.7 dev d1550
x ip link add t6neg type ip6tnl remote fd02::8 local fd02::1 dev d1550
x ip link set d1550 mtu 1500
# negative by configuration: ip tunnels accept an MTU their underlay cannot carry
x ip link add iibig mtu 1500 type ipip remote 10.1.0.11 dev d1500
x ip link add g6big mtu 1500 type ip6gre remote fd01::c local fd01::1 dev d1500

# stacked devices and a bond (not tunnels: no headroom)
x ip link add link d9000 name vl9 type vlan id 9
x ip link add bd type bond
x ip link add ds1 type dummy
x ip link add ds2 type dummy
x ip link set ds1 master bd
x ip link set ds2 master bd
x ip link add link bd name vlb type vlan id 10
echo "topology built"
