"""geotm failover drills: break a real registry replica and measure what a real registry client sees.

`geotm drill` (drills.cli) builds a lab inside a network namespace it creates itself: three CNCF
distribution registries serving TLS from a drill CA, probes and dnsd configured for them, and a
client environment (`ip netns exec` + /etc/netns/<ns>/resolv.conf) whose only resolver is dnsd. It
pushes a small image it builds itself to every replica, then runs the scenarios in
drills.scenarios and compares every measured failover and recovery time with the budget that
dnsd.routing.budget computes from the same config.

Pure parts (no root, no network): drills.image (OCI layouts), drills.labconfig (the generated
configs), drills.timeline (timelines and budget verdicts), drills.pki names.
"""
