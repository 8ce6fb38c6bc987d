"""The operator console's edges over HTTP, against a real VTN process (the browser test walks the
happy path): logins and their refusals, sessions, CSRF on every change, hostile form values and
paths (hypothesis), and the operator accounts of `cariflex-vtn operator`. No input may give a 5xx
or a stack trace, and a refused request writes nothing but its own record."""

from __future__ import annotations

import html
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.openadr_harness import BIN, VtnProcess
from tests.helpers.vtn_checks import TOMORROW, rows

OPERATOR, PASSWORD = "olga", "integration-password-1"
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def vtn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console")
    process = VtnProcess(
        folder,
        f"sqlite:///{folder / 'vtn.sqlite'}",
        env={"CARIFLEX_VTN_OPERATOR": OPERATOR, "CARIFLEX_VTN_OPERATOR_PASSWORD": PASSWORD},
    ).start()
    process.store_url = f"sqlite:///{folder / 'vtn.sqlite'}"
    yield process
    process.stop()


def login(vtn, name: str = OPERATOR, password: str = PASSWORD) -> tuple[requests.Session, requests.Response]:
    browser = requests.Session()
    form = browser.get(f"{vtn.admin_url}/console/login", timeout=30)
    return browser, post_login(vtn, browser, form, name, password)


def post_login(
    vtn, browser, form: requests.Response, name: str, password: str, *, follow: bool = True, **fields: str
) -> requests.Response:
    """The login form ``form`` filled in (more ``fields``: e.g. next) and sent with its token."""
    data = {"csrf_token": TOKEN.search(form.text)[1], "name": name, "password": password, **fields}
    return browser.post(f"{vtn.admin_url}/console/login", data=data, timeout=30, allow_redirects=follow)


@pytest.fixture(scope="module")
def session(vtn):
    browser, answer = login(vtn)
    assert answer.url.endswith("/console/"), answer.text[:300]
    browser.csrf = TOKEN.search(answer.text)[1]
    return browser


def changes(vtn) -> dict:
    """What the store holds apart from the record of operator actions and sessions: its rows, and
    every event and VEN as the admin API shows them (an update changes modified_at at least)."""
    counted = rows(vtn.store_url)
    return {
        **{k: v for k, v in counted.items() if k not in ("vtn_operator_action", "vtn_operator_session")},
        "events": vtn.admin("GET", "/events").json(),
        "vens": vtn.admin("GET", "/vens").json(),
    }


def said(answer: requests.Response) -> str:
    """The page's text as the operator reads it (HTML entities decoded)."""
    return html.unescape(answer.text)


def clean(answer: requests.Response) -> None:
    assert answer.status_code < 500, answer.text[:500]
    assert "Traceback" not in said(answer) and "sqlalchemy" not in said(answer).lower()


def next_quarter() -> str:
    now = datetime.now(UTC) + timedelta(minutes=30)
    return now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0).isoformat()


def test_the_console_is_reached_from_the_admin_port_and_needs_a_login(vtn):
    root = requests.get(f"{vtn.admin_url}/", timeout=30)
    assert root.url.endswith("/console/login?next=/console/")
    # the admin API keeps its bearer token; the console's pages do not open it
    assert vtn.admin("GET", "/events", token=None).status_code == 401
    for path in ("/console/vens", "/console/health", "/console/events/evt-x"):
        answer = requests.get(f"{vtn.admin_url}{path}", timeout=30, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/console/login?next=")
    before = changes(vtn)
    answer = requests.post(
        f"{vtn.admin_url}/console/events/new/load-control",
        data={"start": next_quarter(), "duration": "PT1H", "levels": "0.5"},
        timeout=30,
    )
    assert answer.status_code == 401 and "log in again. Nothing was changed." in said(answer)
    assert changes(vtn) == before


def test_login_refusals_say_why_and_make_no_session(vtn):
    before = rows(vtn.store_url)["vtn_operator_session"]
    browser, answer = login(vtn, password="wrong-password-here")
    assert answer.status_code == 401 and "wrong operator name or password" in said(answer)
    _, unknown = login(vtn, name="nobody-by-that-name")
    assert unknown.status_code == 401 and "wrong operator name or password" in said(unknown)  # same words
    # without the login form's token (a foreign page posting a login)
    forged = requests.post(
        f"{vtn.admin_url}/console/login", data={"name": OPERATOR, "password": PASSWORD}, timeout=30
    )
    assert forged.status_code == 403 and "CSRF token is missing or wrong" in said(forged)
    assert rows(vtn.store_url)["vtn_operator_session"] == before
    assert "cariflex_vtn_session" not in browser.cookies


def test_five_failed_logins_lock_the_name_for_a_while(vtn, tmp_path):
    subprocess.run(
        [str(BIN / "cariflex-vtn"), "operator", "add", "victor", "--password-file", "-"],
        input="victor-password-123\n",
        env=vtn.env,
        check=True,
        capture_output=True,
        text=True,
    )
    for _ in range(5):
        assert login(vtn, "victor", "guess-guess-guess")[1].status_code == 401
    _, locked = login(vtn, "victor", "victor-password-123")  # even the right password now
    assert locked.status_code == 401 and "too many failed logins for 'victor'" in said(locked)
    assert login(vtn)[1].url.endswith("/console/")  # other operators are not locked out


def test_after_login_only_a_console_path(vtn):
    browser = requests.Session()
    form = browser.get(f"{vtn.admin_url}/console/login?next=//evil.example/x", timeout=30)
    assert "evil" not in said(form)
    answer = post_login(vtn, browser, form, OPERATOR, PASSWORD, follow=False, next="https://evil.example/")
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console/" in cookie


def test_every_change_needs_the_sessions_csrf_token(vtn, session):
    created = session.post(
        f"{vtn.admin_url}/console/events/new/load-control",
        data={"csrf_token": session.csrf, "start": next_quarter(), "duration": "PT1H", "levels": "0.5"},
        timeout=30,
    )
    assert "Event created." in said(created)
    event_id = created.url.split("/events/")[1].split("?")[0]
    before = changes(vtn)
    for path, data in (
        ("/console/events/new/load-control", {"start": next_quarter(), "duration": "PT1H", "levels": "0.5"}),
        ("/console/events/new/price", {"start": next_quarter(), "prices": " ".join(["50"] * 24)}),
        (f"/console/events/{event_id}/modify", {"levels": "0.3"}),
        (f"/console/events/{event_id}/cancel", {}),
        ("/console/logout", {}),
    ):
        for token in (None, "forged-token", session.csrf[:-1]):
            sent = {**data, **({"csrf_token": token} if token else {})}
            answer = session.post(f"{vtn.admin_url}{path}", data=sent, timeout=30)
            assert answer.status_code == 403, (path, token, answer.status_code)
            assert "CSRF token is missing or wrong, so nothing was changed" in said(answer)
    assert changes(vtn) == before
    assert session.get(f"{vtn.admin_url}/console/vens", timeout=30).url.endswith("/vens")  # still logged in


def test_pages_carry_a_content_security_policy(vtn, session):
    page = session.get(f"{vtn.admin_url}/console/", timeout=30)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert "http://" not in said(page).replace(vtn.admin_url, "") and "https://" not in said(page)


def test_a_bad_form_value_is_refused_with_the_clis_message_and_changes_nothing(vtn, session):
    before = changes(vtn)
    cases = [
        (
            {"start": next_quarter(), "duration": "PT1H", "levels": "2"},
            "--levels: value 1 (2) is outside 0..1",
        ),
        (
            {"start": "tomorrow", "duration": "PT1H", "levels": "0.5"},
            "--start 'tomorrow' is not an ISO 8601 time",
        ),
        ({"start": next_quarter(), "duration": "PT7M", "levels": "0.5"}, "--duration"),
        ({"start": next_quarter(), "levels": "0.5"}, "missing --duration"),
        (
            {"start": next_quarter(), "duration": "PT1H", "levels": "0.5", "vens": "ghost"},
            "ghost not provisioned",
        ),
    ]
    for data, message in cases:
        answer = session.post(
            f"{vtn.admin_url}/console/events/new/load-control",
            data={"csrf_token": session.csrf, **data},
            timeout=30,
        )
        assert answer.status_code == 400 and message in said(answer), (data, answer.text[-800:])
        assert "Nothing was changed." in said(answer)
    prices = session.post(
        f"{vtn.admin_url}/console/events/new/price",
        data={"csrf_token": session.csrf, "start": TOMORROW.isoformat(), "prices": "1 2 3"},
        timeout=30,
    )
    assert prices.status_code == 400 and "--values has 3 prices; a price event needs exactly 24" in said(
        prices
    )
    assert changes(vtn) == before
    # the same input through the CLI: the same words
    cli = vtn.cli(
        "event", "load-control", "--start", next_quarter(), "--duration", "PT1H", "--levels", "2", check=False
    )
    assert "--levels: value 1 (2) is outside 0..1" in cli.stderr


def test_modify_and_cancel_refusals(vtn, session):
    created = session.post(
        f"{vtn.admin_url}/console/events/new/load-control",
        data={"csrf_token": session.csrf, "start": next_quarter(), "duration": "PT2H", "levels": "0.5,0.6"},
        timeout=30,
    )
    event_id = created.url.split("/events/")[1].split("?")[0]
    nothing = session.post(
        f"{vtn.admin_url}/console/events/{event_id}/modify", data={"csrf_token": session.csrf}, timeout=30
    )
    assert nothing.status_code == 400 and "nothing to modify" in said(nothing)
    per_hour = session.post(
        f"{vtn.admin_url}/console/events/{event_id}/modify",
        data={"csrf_token": session.csrf, "duration": "PT3H"},
        timeout=30,
    )
    assert per_hour.status_code == 400 and "give --levels for the new hours too" in said(per_hour)
    cancel = f"{vtn.admin_url}/console/events/{event_id}/cancel"
    assert "done=cancelled" in session.post(cancel, data={"csrf_token": session.csrf}, timeout=30).url
    again = session.post(cancel, data={"csrf_token": session.csrf}, timeout=30)
    assert again.status_code == 409 and "is already cancelled" in said(again)
    late = session.post(
        f"{vtn.admin_url}/console/events/{event_id}/modify",
        data={"csrf_token": session.csrf, "levels": "0.2"},
        timeout=30,
    )
    assert late.status_code == 409 and "can no longer be modified" in said(late)
    shown = vtn.admin("GET", f"/events/{event_id}").json()
    assert shown["status"] == "cancelled" and shown["modification_number"] == 1


FIELDS = ("start", "duration", "levels", "ramp_up", "notification", "recovery", "targets", "vens", "prices")
hostile = st.one_of(
    st.text(max_size=60),
    st.sampled_from(
        ["", "0", "-1", "1e309", "nan", "PT0S", "P99999D", "all", "a,,b", "<script>x</script>", "'--"]
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["load-control", "price", "other"]),
    data=st.dictionaries(st.sampled_from(FIELDS + ("allow_past", "x")), hostile, max_size=6),
)
def test_no_form_crashes_the_console_or_writes_when_refused(vtn, session, kind, data):
    before = changes(vtn)
    answer = session.post(
        f"{vtn.admin_url}/console/events/new/{kind}",
        data={"csrf_token": session.csrf, **data},
        timeout=30,
        allow_redirects=False,
    )
    clean(answer)
    if answer.status_code == 303:  # accepted: exactly the one event it redirects to is new
        created = answer.headers["Location"].split("/events/")[1].split("?")[0]
        assert [e["event_id"] for e in changes(vtn)["events"] if e not in before["events"]] == [created]
    else:
        assert answer.status_code in (400, 404)
        assert changes(vtn) == before
        assert "<script>x</script>" not in answer.text  # every value shown back is escaped


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_no_path_crashes_the_console(vtn, session, path):
    for url in (f"/console/events/{path}", f"/console/events/{path}/modify", f"/console/{path}"):
        answer = session.get(f"{vtn.admin_url}{requests.utils.quote(url)}", timeout=30)
        clean(answer)


def test_operator_accounts_from_the_command_line(vtn):
    def cli(*args: str, password: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "cariflex-vtn"), "operator", *args],
            input=password,
            env=vtn.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    short = cli("add", "pat", "--password-file", "-", password="short\n")
    assert short.returncode == 1 and "the password must have 12 to 1024 characters" in short.stderr
    bad_name = cli("add", "pat smith", "--password-file", "-", password="long-enough-password\n")
    assert bad_name.returncode == 1 and "operator name 'pat smith' must be" in bad_name.stderr
    assert "pat" not in cli("list").stdout
    assert cli("add", "pat", "--password-file", "-", password="long-enough-password\n").returncode == 0
    twice = cli("add", "pat", "--password-file", "-", password="long-enough-password\n")
    assert twice.returncode == 1 and "exists already" in twice.stderr
    browser, answer = login(vtn, "pat", "long-enough-password")
    assert answer.url.endswith("/console/")
    # the store holds no password, only its scrypt hash
    stored = b"".join(
        Path(vtn.store_url.removeprefix("sqlite:///")).with_name(name).read_bytes()
        for name in ("vtn.sqlite", "vtn.sqlite-wal")
        if Path(vtn.store_url.removeprefix("sqlite:///")).with_name(name).exists()
    )
    assert b"long-enough-password" not in stored and b"scrypt$16384" in stored
    # a new password ends the sessions of the old one; removing ends them too
    assert (
        cli("add", "pat", "--replace", "--password-file", "-", password="another-password-1\n").returncode
        == 0
    )
    assert browser.get(f"{vtn.admin_url}/console/vens", timeout=30).url.endswith(
        "/console/login?next=/console/vens"
    )
    assert cli("remove", "pat").returncode == 0
    assert login(vtn, "pat", "another-password-1")[1].status_code == 401


def test_every_page_shows_every_kind_of_event(vtn, session):
    """A price event, one for named VENs with periods, a cancelled one, a VEN never registered."""
    vtn.cli("ven", "add", "quiet-ven", "--capacity-kw", "100")
    price = vtn.admin(
        "POST", "/events/price", {"start": TOMORROW.isoformat(), "prices": [100 + h for h in range(24)]}
    ).json()
    named = vtn.admin(
        "POST",
        "/events/load-control",
        {
            "start": next_quarter(),
            "duration": "PT1H30M",
            "levels": [0.5, 0.7],
            "vens": ["quiet-ven"],
            "targets": ["site:battery-1"],
            "ramp_up": "PT15M",
        },
    ).json()
    cancelled = vtn.admin(
        "POST", "/events/load-control", {"start": next_quarter(), "duration": "PT1H", "levels": 0.3}
    ).json()
    vtn.admin("POST", f"/events/{cancelled['event_id']}/cancel")
    for event in (price, named, cancelled):
        base = f"{vtn.admin_url}/console/events/{event['event_id']}"
        for url in (base, f"{base}/modify", f"{base}/cancel", f"{base}/vens", f"{base}/data.json"):
            answer = session.get(url, timeout=30)
            clean(answer)
            assert answer.status_code == 200, (url, answer.text[-500:])
    page = said(session.get(f"{vtn.admin_url}/console/events/{price['event_id']}", timeout=30))
    assert "Prices" in page and "123" in page and "EUR/MWh" in page
    page = said(session.get(f"{vtn.admin_url}/console/events/{named['event_id']}", timeout=30))
    assert "quiet-ven" in page and "site:battery-1" in page and "PT15M" in page
    chart = session.get(f"{vtn.admin_url}/console/events/{price['event_id']}/data.json", timeout=30).json()
    assert chart["kind"] == "price" and len(chart["intervals"]) == 24 and chart["picture"] is None
    for path, shows in (
        ("/console/", "for quiet-ven"),
        ("/console/?month=2031-02", "February 2031"),
        ("/console/vens", "quiet-ven"),
        ("/console/health", "VENs provisioned"),
    ):
        answer = session.get(f"{vtn.admin_url}{path}", timeout=30)
        assert answer.status_code == 200 and shows in said(answer), path
    vens = said(session.get(f"{vtn.admin_url}/console/vens", timeout=30))
    assert "not registered" in vens
    bad_month = session.get(f"{vtn.admin_url}/console/?month=13-2026", timeout=30)
    assert bad_month.status_code == 400 and "is not YYYY-MM" in said(bad_month)


def test_a_body_aiohttp_cannot_decode_is_refused_not_a_crash(vtn, session):
    before = changes(vtn)
    url = f"{vtn.admin_url}/console/login"
    odd_charset = requests.post(
        url,
        data=b"name=x&password=y",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=x-bogus"},
        timeout=30,
    )
    boundary = "b0undary"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n'
        "Content-Transfer-Encoding: bogus\r\n\r\nx\r\n"
        f"--{boundary}--\r\n"
    )
    odd_encoding = requests.post(
        url,
        data=part.encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    for answer in (odd_charset, odd_encoding):
        clean(answer)
        assert answer.status_code == 400 and "the form could not be read" in said(answer)
    nul = session.post(
        f"{vtn.admin_url}/console/events/new/load-control",
        data={"csrf_token": session.csrf, "start": "x\x00y", "duration": "PT1H", "levels": "0.5"},
        timeout=30,
    )
    assert nul.status_code == 400 and "field 'start' holds a NUL character" in said(nul)
    assert changes(vtn) == before


def test_forged_logins_do_not_lock_an_operator_out(vtn):
    for _ in range(8):  # a foreign page posting logins (no login-form token) in the operator's name
        forged = requests.post(
            f"{vtn.admin_url}/console/login", data={"name": OPERATOR, "password": "x"}, timeout=30
        )
        assert forged.status_code == 403
    assert login(vtn)[1].url.endswith("/console/")


def test_a_failed_login_keeps_where_the_operator_was_going(vtn):
    browser = requests.Session()
    form = browser.get(f"{vtn.admin_url}/console/login?next=/console/vens", timeout=30)
    refused = post_login(vtn, browser, form, OPERATOR, "wrong", next="/console/vens")
    answer = post_login(vtn, browser, refused, OPERATOR, PASSWORD, next="/console/vens")
    assert answer.url.endswith("/console/vens")


def test_a_link_cannot_put_words_on_a_page(vtn, session):
    page = session.get(f"{vtn.admin_url}/console/?done=cancelled.%20Call%20%2B1%20555", timeout=30)
    assert page.status_code == 200 and "Call +1" not in said(page) and "Event cancelled" not in said(page)
