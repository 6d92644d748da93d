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
