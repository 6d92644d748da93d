from django_reliable_mail.smtp import Envelope, ServerSettings

PASSWORD = "pw-Zq8#secret"
BODY = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello\r\n"


def settings_for(server, ca_file=None, **overrides) -> ServerSettings:
    values = {
        "host": server.host,
        "port": server.port,
        "tls": server.tls,
        "ca_file": ca_file,
        "timeout": 5,
    }
    values.update(overrides)
    return ServerSettings(**values)


def envelope(recipients=("b@example.com",), data=BODY, **kwargs) -> Envelope:
    return Envelope(sender="a@example.com", recipients=list(recipients), data=data, **kwargs)


def oauth_token(*, username, force_refresh):
    """OAUTH2_TOKEN callable used by the settings-level tests."""
    return "ya29.token-Very-Secret"


def forbidden_strings(username: str, password: str, token: str) -> list[str]:
    """A secret in every form it travels in during AUTH."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return [
        password,
        b64(password),
        b64(f"\0{username}\0{password}"),
        token,
        b64(f"user={username}\x01auth=Bearer {token}\x01\x01"),
    ]
