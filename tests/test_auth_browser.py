"""Sign-in end to end: a real OpenID provider on 127.0.0.1 (oidc-provider-mock), the app's [auth] pointed at it
through a temporary secrets file, headless Chromium through the provider's login form into the app. A reviewer's
edit is stored under their identity, a viewer's is refused by the store, tiles need a session, sign-out ends it,
an admin assigns slides and a blind second read hides the first label until it is submitted."""

from __future__ import annotations

import re
import secrets

import _browser
import httpx
import pytest
from _browser import CHROMIUM_ARGS, choose_option, running_app, save_screenshot
from _review_data import make_review_cohort

from core.cohort.cohort_file import load_cohort
from core.review.auth import Identity
from core.review.queue import open_cohort_store

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    from oidc_provider_mock import User, run_server_in_thread

    tmp = tmp_path_factory.mktemp("auth_browser")
    toml = make_review_cohort(tmp / "cohort")
    with toml.open("a") as f:
        f.write('\n[access]\nadmins = ["boss@lab.org"]\n')
    users = [User(sub=s, claims={"email": f"{s}@lab.org", "name": s.title()}) for s in ("boss", "alice", "bob",
                                                                                         "eve")]
    with run_server_in_thread(user_claims=users) as provider:
        issuer = f"http://127.0.0.1:{provider.server_port}"
        port = _browser.free_port()
        secrets_file = tmp / "secrets" / "secrets.toml"  # outside the repository; the cookie secret is random
        secrets_file.parent.mkdir()
        secrets_file.write_text(
            f'[auth]\nredirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
            f'cookie_secret = "{secrets.token_hex(32)}"\nclient_id = "slidelens"\nclient_secret = "test"\n'
            f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n')
        store = open_cohort_store(load_cohort(toml))  # roles as an admin would give them
        ids = {s: Identity(issuer, s, f"{s}@lab.org", s.title()) for s in ("boss", "alice", "bob")}
        assert store.sign_in(ids["boss"], admins=["boss@lab.org"]) == "admin"
        for s in ("alice", "bob"):
            store.sign_in(ids[s])
        admin = store.as_user(ids["boss"])
        uid = {u["subject"]: int(u["id"]) for u in store.users()}
        admin.set_role(uid["alice"], "reviewer")
        admin.set_role(uid["bob"], "reviewer")
        admin.assign(["s03", "s05"], uid["alice"])
        orig = _browser.free_port
        _browser.free_port = lambda: port  # running_app serves on the port the redirect URI names
        try:
            with running_app({"SLIDELENS_COHORT": str(toml), "STREAMLIT_SECRETS_FILES": str(secrets_file)},
                             tmp / "streamlit.log") as url:
                yield {"url": url, "store": store, "issuer": issuer, "uid": uid, "admin": admin}
        finally:
            _browser.free_port = orig


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _sign_in(browser, url: str, sub: str, path: str = ""):  # noqa: ANN001, ANN202 - playwright objects
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1500, "height": 1400}).new_page()
    page.goto(f"{url}/{path}", wait_until="domcontentloaded")
    page.get_by_role("button", name="Sign in").click(timeout=60_000)
    page.wait_for_url("**/oauth2/authorize**", timeout=30_000)  # the provider's own login page
    page.locator("input[name=sub]").fill(sub)
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_text(_email_text(f"Signed in as {sub}@lab.org"))).to_be_visible(timeout=60_000)
    if path:  # the provider sends the browser back to the app's home page
        page.goto(f"{url}/{path}", wait_until="domcontentloaded")
    return page


def _email_text(text: str) -> re.Pattern[str]:
    """The text as the page shows it: ui.safe.md puts an invisible word joiner after '@' (no e-mail autolink)."""
    return re.compile(re.escape(text).replace("@", "@\u2060?"))


def _relabel(page, url: str, slide: str, label: str) -> None:  # noqa: ANN001 - a playwright Page
    from playwright.sync_api import expect

    page.goto(f"{url}/review?slide={slide}", wait_until="domcontentloaded")
    expect(page.locator(f".st-key-rv_{slide}_reason input")).to_be_visible(timeout=60_000)
    choose_option(page, f".st-key-rv_{slide}_1_new_label", label)
    reason = page.locator(f".st-key-rv_{slide}_reason input")
    reason.fill("signed-in edit")
    reason.press("Enter")


def test_tiles_need_a_session(env) -> None:  # noqa: ANN001
    url = env["url"]
    assert httpx.get(f"{url}/tiles/s01.dzi").status_code == 401
    assert httpx.get(f"{url}/tiles/s01.dzi", cookies={"_streamlit_user": "forged.value.sig"}).status_code == 401


def test_reviewer_edit_is_attributed_and_sign_out_ends_access(env, browser) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, store = env["url"], env["store"]
    page = _sign_in(browser, url, "alice", "review")
    expect(page.get_by_text("Only my queue (2 assigned to me)")).to_be_visible(timeout=60_000)
    expect(page.locator(".st-key-rv_s03_reason input")).to_be_visible(timeout=60_000)  # my queue's first slide
    assert page.request.get(f"{url}/tiles/s01.dzi").status == 200  # the browser's session fetches tiles
    _relabel(page, url, "s01", "tumor")
    expect(page.get_by_text("s01: saved label = 'tumor'")).to_be_visible(timeout=30_000)
    row = store.history("s01")[-1]
    assert (row.field, row.new_value, row.reviewer) == ("label", "tumor", "alice@lab.org")
    save_screenshot(page, "auth_reviewer")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(lambda u: "/review" not in u, timeout=30_000)  # the provider's end-of-session page
    assert page.request.get(f"{url}/tiles/s01.dzi").status == 401  # the session cookie is gone
    page.goto(url, wait_until="domcontentloaded")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)


def test_viewer_cannot_change_anything(env, browser) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, store = env["url"], env["store"]
    before = len(store.history("s02"))
    page = _sign_in(browser, url, "eve", "review")  # unknown to the database: lands as viewer
    expect(page.get_by_text(_email_text("Signed in as eve@lab.org · viewer"))).to_be_visible(timeout=30_000)
    _relabel(page, url, "s02", "Other")
    expect(page.get_by_text("your role is viewer").first).to_be_visible(timeout=30_000)
    assert len(store.history("s02")) == before
    save_screenshot(page, "auth_viewer_refused")


def test_blind_second_read(env, browser) -> None:  # noqa: ANN001
    from playwright.sync_api import expect

    url, store, uid, admin = env["url"], env["store"], env["uid"], env["admin"]
    alice = store.as_user(Identity(env["issuer"], "alice", "alice@lab.org"))
    alice.set_label("s06", "normal", None, "first read", store.state("s06").version)
    admin.request_second_read("s06", uid["bob"])
    page = _sign_in(browser, url, "bob", "review?slide=s06")
    expect(page.get_by_text("s06 · blind second read")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("first label is hidden")).to_be_visible()
    assert page.get_by_text("first read", exact=True).count() == 0
    choose_option(page, ".st-key-blind_s06_label", "tumor")
    page.get_by_role("button", name="Submit second read").click()
    expect(page.get_by_text(_email_text("the first read was 'normal' by alice@lab.org"))).to_be_visible(
        timeout=30_000)
    reads = [r for r in store.second_reads() if r["image_id"] == "s06"]
    assert reads[0]["second_label"] == "tumor" and reads[0]["first_label"] == "normal"
    save_screenshot(page, "auth_blind_read")
