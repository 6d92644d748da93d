"""A private Postfix instance on loopback for interop tests.

Own configuration, queue, log and Maildir under one temporary directory; STARTTLS on one
port and implicit TLS on another; Cyrus SASL AUTH from a sasldb file (no saslauthd);
certificates from a throwaway CA; every recipient delivered to one Maildir. Needs Debian's
``postfix``, ``sasl2-bin`` and ``libsasl2-modules`` and root (as in CI). The system's own
Postfix is never started or touched.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from email import message_from_bytes
from email.policy import default
from pathlib import Path

from django_reliable_mail.testing import free_port

DOMAIN = "interop.test"
MASTER_CF = """\
{starttls_port} inet n - n - - smtpd
  -o smtpd_tls_security_level=may
{implicit_port} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available() -> bool:
    return bool(shutil.which("postfix") and shutil.which("saslpasswd2")) and os.geteuid() == 0


@dataclass
class Postfix:
    root: Path
    starttls_port: int
    implicit_port: int
    ca_file: str
    username: str
    password: str

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / DOMAIN / "Maildir"

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def delivered(self, timeout: float = 15) -> list:
        """Messages in the Maildir, waiting for the queue to deliver them."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            files = sorted((self.maildir / "new").glob("*")) if self.maildir.exists() else []
            if files:
                return [message_from_bytes(f.read_bytes(), policy=default) for f in files]
            time.sleep(0.1)
        return []

    def wait_for_log(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            match = re.search(pattern, self.log())
            if match:
                return match
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not in the Postfix log:\n{self.log()}")

    def stop(self) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.config_dir), "stop"], check=False, capture_output=True
        )


def start(root: Path, *, cert_pem: str, key_pem: str, ca_file: str) -> Postfix:
    conf, queue, data, mail = root / "conf", root / "queue", root / "data", root / "mail"
    for directory in (conf, queue, data, mail):
        directory.mkdir(parents=True, exist_ok=True)
    postfix_user = pwd.getpwnam("postfix")
    os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
    os.chown(mail, postfix_user.pw_uid, postfix_user.pw_gid)
    (conf / "cert.pem").write_text(cert_pem)
    (conf / "key.pem").write_text(key_pem)
    os.chmod(conf / "key.pem", 0o600)

    username, password = f"app@{DOMAIN}", "interop-Secret-42"
    (root / "sasl").mkdir(exist_ok=True)
    sasldb = root / "sasl" / "sasldb2"  # outside conf/: Postfix wants that owned by root
    subprocess.run(
        ["saslpasswd2", "-c", "-p", "-f", str(sasldb), "-u", DOMAIN, "app"],
        input=password.encode(),
        check=True,
    )
    os.chown(sasldb, postfix_user.pw_uid, postfix_user.pw_gid)
    (conf / "sasl").mkdir(exist_ok=True)
    (conf / "sasl" / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN CRAM-MD5\n"
        f"sasldb_path: {sasldb}\n"
    )

    starttls_port, implicit_port = free_port(), free_port()
    main_cf = {
        "compatibility_level": "3.7",
        "queue_directory": str(queue),
        "data_directory": str(data),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "myhostname": f"mx.{DOMAIN}",
        "mydomain": DOMAIN,
        "mydestination": "",
        "mynetworks": "",
        "relayhost": "",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "virtual_mailbox_domains": DOMAIN,
        "virtual_mailbox_base": str(mail),
        "virtual_mailbox_maps": f"static:{DOMAIN}/Maildir/",
        "virtual_uid_maps": f"static:{postfix_user.pw_uid}",
        "virtual_gid_maps": f"static:{postfix_user.pw_gid}",
        "smtputf8_enable": "yes",
        "smtpd_tls_cert_file": str(conf / "cert.pem"),
        "smtpd_tls_key_file": str(conf / "key.pem"),
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_loglevel": "1",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "cyrus_sasl_config_path": str(conf / "sasl"),
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        "maillog_file_prefixes": str(root),
        "maillog_file": str(root / "maillog"),
        "smtpd_banner": "$myhostname ESMTP interop",
        "biff": "no",
    }
    (conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
    (conf / "master.cf").write_text(
        MASTER_CF.format(
            starttls_port=f"127.0.0.1:{starttls_port}", implicit_port=f"127.0.0.1:{implicit_port}"
        )
    )
    started = subprocess.run(["postfix", "-c", str(conf), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"postfix did not start:\n{started.stdout}\n{started.stderr}")
    instance = Postfix(root, starttls_port, implicit_port, ca_file, username, password)
    _wait_for_port(starttls_port)
    _wait_for_port(implicit_port)
    return instance


def _wait_for_port(port: int, timeout: float = 15) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"postfix is not listening on 127.0.0.1:{port}")
