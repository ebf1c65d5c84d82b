"""Helpers for the console's tests: the app on a real Redis with one operator, log-in, and the
CSRF token read off a page as a browser would."""

from __future__ import annotations

import re
import warnings

# starlette 0.52's test client names anyio.abc.BlockingPortal, an alias anyio 4.13 deprecates,
# in annotations evaluated when the module is imported (and only then).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "The anyio.abc.BlockingPortal alias", DeprecationWarning)
    from starlette.testclient import TestClient

OPERATOR = "ana"
PASSWORD = "correct horse battery"

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    found = _CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def log_in(client: TestClient, name: str = OPERATOR, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    token = csrf_of(client.get("/login").text)
    answer = client.post(
        "/login",
        data={"name": name, "password": password, "csrf": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return csrf_of(client.get("/machines/vm-1/").text)


def post(client: TestClient, path: str, token: str | None, **fields: str):
    """A form POST with `token` as its CSRF field (None: without one); not followed."""
    data = dict(fields)
    if token is not None:
        data["csrf"] = token
    return client.post(path, data=data, follow_redirects=False)


__all__ = ["TestClient", "csrf_of", "log_in", "post"]
