#!/usr/bin/env python3
"""Boots the Root VM kernel + initramfs on QEMU's bundled OpenSBI (no hypervisor) and
checks it over the console: login prompt, passwordless root, nproc, Lua, hostname,
poweroff. Usage: boot-test.py IMAGE INITRAMFS [SMP] [CMDLINE]. Needs python3-pexpect."""
import re
import sys
import time

import pexpect

image, initramfs = sys.argv[1], sys.argv[2]
smp = int(sys.argv[3]) if len(sys.argv) > 3 else 2
cmdline = sys.argv[4] if len(sys.argv) > 4 else "console=hvc0 earlycon=sbi"
PROMPT = r"root@diosix:\S*# "

qemu = pexpect.spawn(
    "qemu-system-riscv64",
    ["-machine", "virt", "-smp", str(smp), "-m", "512M", "-nographic", "-bios", "default",
     "-kernel", image, "-initrd", initramfs, "-append", cmdline],
    encoding="utf-8", codec_errors="replace", timeout=120,
)
qemu.logfile_read = sys.stdout
start = time.monotonic()


def run(cmd, output):
    """Runs cmd at the shell prompt and fails unless one line of its output is `output`.
    Lines end in CR CR CR LF here (hvc and the host pty both add a CR), hence the regex."""
    qemu.sendline(cmd)
    qemu.expect(rf"[\r\n]{re.escape(output)}\r*\n")
    qemu.expect(PROMPT)


qemu.expect_exact("Diosix Root VM")
qemu.expect_exact("diosix login: ")
to_login = time.monotonic() - start
qemu.sendline("root")
qemu.expect(PROMPT)  # no password asked
run("nproc", str(smp))
run("lua -e 'print(6*7)'", "42")
run("hostname", "diosix")
qemu.sendline("poweroff")
qemu.expect(pexpect.EOF, timeout=60)
qemu.close()
print(f"\nBOOT-TEST OK smp={smp}: login prompt after {to_login:.1f}s, "
      f"qemu exit status {qemu.exitstatus}")
