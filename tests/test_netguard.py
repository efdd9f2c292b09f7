"""config.netguard: the one public-host rule behind image fetches and notification webhooks."""

import socket

import pytest

from config.netguard import NonPublicAddress, refuse_non_public


@pytest.mark.parametrize(
    ("host", "address"),
    [("127.0.0.1", "127.0.0.1"), ("10.1.2.3", "10.1.2.3"), ("169.254.169.254", "169.254.169.254"),
     ("[::1]", "::1"), ("fe80::1", "fe80::1"), ("192.168.0.10", "192.168.0.10")],
)  # fmt: skip
def test_literal_non_public_addresses_are_refused_without_a_lookup(host, address, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: pytest.fail("no lookup for a literal address"))
    with pytest.raises(NonPublicAddress) as info:
        refuse_non_public(host, 80, resolve=True)
    assert (info.value.reason, info.value.address) == ("non_public", address)


def test_loopback_names_are_refused_even_unresolved():
    for host in ("localhost", "LOCALHOST", "api.localhost"):
        with pytest.raises(NonPublicAddress) as info:
            refuse_non_public(host, 443, resolve=False)
        assert info.value.reason == "loopback_name"


def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(monkeypatch):
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 443))]  # fmt: skip
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(NonPublicAddress) as info:
        refuse_non_public("rebinding.example", 443)
    assert info.value.address == "10.0.0.7"
    refuse_non_public("rebinding.example", 443, resolve=False)  # saved now, checked again before each call


def test_public_hosts_pass_and_an_unresolvable_name_says_so(monkeypatch):
    refuse_non_public("93.184.216.34", 443)
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET6, 1, 6, "", ("2606:4700::1", 443, 0, 0))]
    )
    refuse_non_public("example.com", 443)

    def unresolvable(*args, **kwargs):
        raise socket.gaierror("no such name")

    monkeypatch.setattr(socket, "getaddrinfo", unresolvable)
    with pytest.raises(NonPublicAddress) as info:
        refuse_non_public("nowhere.invalid", 443)
    assert info.value.reason == "unresolved" and "nowhere.invalid" in str(info.value)
