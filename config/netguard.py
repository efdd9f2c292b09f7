"""One rule for every URL Steplens calls on someone's say-so (image URLs in tool returns, notification webhooks):
the host must be public. Without it a URL such as http://169.254.169.254/ would make Steplens call into its own
network. Callers decide whether their deployment lifts the rule and which error their users see.
"""

from __future__ import annotations

import ipaddress
import socket

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


class NonPublicAddress(Exception):
    """`host` is not a public address: `reason` is `loopback_name`, `unresolved` or `non_public` (then `address`)."""

    def __init__(self, host: str, reason: str, address: str | None = None) -> None:
        self.host, self.reason, self.address = host, reason, address
        super().__init__(
            {
                "loopback_name": f"{host} is a loopback name.",
                "unresolved": f"Could not resolve {host!r}.",
                "non_public": f"{host} is a private, loopback or link-local address ({address}).",
            }[reason]
        )


def refuse_non_public(host: str, port: int, *, resolve: bool = True) -> None:
    """Raise NonPublicAddress unless `host` is, and (for a name) resolves only to, global addresses.

    With `resolve` False, a name is not looked up: only literal addresses and loopback names are refused (a name
    that does not resolve yet is no error when a URL is saved; it is checked again before each call).
    """
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        name = host.lower()
        if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
            raise NonPublicAddress(host, "loopback_name") from None
        if not resolve:
            return
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except OSError as exc:
            raise NonPublicAddress(host, "unresolved") from exc
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if not address.is_global:
            raise NonPublicAddress(host, "non_public", str(address))
