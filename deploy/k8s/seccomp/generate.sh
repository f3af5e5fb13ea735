#!/usr/bin/env bash
# Regenerates ztna-relay.json: an OCI seccomp profile (the format kubelet's
# `Localhost` profiles use with containerd and CRI-O) that allows systemd's
# @system-service syscall set, which is what a container runtime's default
# profile also allows in spirit (no mount, ptrace, bpf, module loading,
# reboot, clock setting, swap, raw I/O), plus the three io_uring calls that
# recent runtime defaults (moby >= 25, containerd >= 2.0) deny.
# Needs systemd-analyze; the list depends on its version (generated with
# systemd 252).
set -euo pipefail
cd "$(dirname "$0")"
expand() {
    systemd-analyze syscall-filter "$1" | sed 's/^ *//' | grep -v '^#' | tail -n +2 |
        while read -r s; do
            [ -z "$s" ] && continue
            case $s in @*) expand "$s" ;; *) echo "$s" ;; esac
        done
}
{ expand @system-service; printf '%s\n' io_uring_setup io_uring_enter io_uring_register; } |
    sort -u | python3 -c '
import json, sys
names = [l.strip() for l in sys.stdin if l.strip()]
profile = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}],
}
json.dump(profile, sys.stdout, indent=1)
print()
' >ztna-relay.json
echo "wrote $(pwd)/ztna-relay.json"
