"""The web console in headless Chromium against the real stack (gunicorn, MariaDB, Redis).

Chromium is Debian's (``apt-get install chromium chromium-driver``), driven by Playwright
(``pip install playwright``); ``playwright install`` is never needed. A missing browser is a
failure, not a skip. The tests sign in, enroll two LFW identities, identify and verify,
delete a subject through the confirmation dialog, check that hostile names stay text and
that every console response carries the security headers. They save screenshots into a
temporary folder, or into ``VEILFACE_TEST_SCREENSHOTS`` when it is set: ``make screenshots``
refreshes those of ``docs/console.md`` that way, so a test run never rewrites the docs.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from PIL import Image
from sqlalchemy import select

from tests.support import faceless_jpeg, needs_markers
from veilface.config import load_settings
from veilface.store.apikeys import create_api_key, revoke_api_key
from veilface.store.db import make_engine, session_factory, session_scope
from veilface.store.models import ApiKey

pytestmark = pytest.mark.stack

CHROMIUM = Path(os.environ.get("VEILFACE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
GALLERY = "console"
XSS_GALLERY = '"><svg onload=alert(2)>'
XSS_SUBJECT = "<img src=x onerror=alert(1)>"
SCRIPT_SUBJECT = "<script>alert(1)</script>"
GROUP_SUBJECT = "Group photo"
#: Enrolling and searching wait on the workers; the first call also loads the models.
SLOW_MS = 120_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CONSOLE_PAGES = ("login", "enroll", "identify", "verify", "galleries", "status")


def display_name(photo: Path) -> str:
    return photo.parent.name.replace("_", " ")


def two_faces_jpeg(left: Path, right: Path) -> bytes:
    """Two LFW photos side by side: at least two faces in one image."""
    first, second = Image.open(left).convert("RGB"), Image.open(right).convert("RGB")
    canvas = Image.new("RGB", (first.width + second.width, max(first.height, second.height)), "white")
    canvas.paste(first, (0, 0))
    canvas.paste(second, (first.width, 0))
    out = io.BytesIO()
    canvas.save(out, "JPEG", quality=92)
    return out.getvalue()


def write_y4m(photo: Path, out: Path) -> Path:
    """``photo`` as a one-frame Y4M video (4:2:0), which Chromium's fake camera plays in a loop."""
    image = Image.open(photo).convert("RGB")
    width, height = image.width // 2 * 2, image.height // 2 * 2
    luma, blue, red = image.crop((0, 0, width, height)).convert("YCbCr").split()
    chroma = [c.resize((width // 2, height // 2), Image.BILINEAR).tobytes() for c in (blue, red)]
    header = f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode()
    out.write_bytes(header + b"FRAME\n" + luma.tobytes() + b"".join(chroma))
    return out


def upscaled_jpeg(photo: Path, side: int) -> bytes:
    out = io.BytesIO()
    Image.open(photo).convert("RGB").resize((side, side), Image.BICUBIC).save(out, "JPEG", quality=90)
    return out.getvalue()


def jpeg_upload(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/jpeg", "buffer": data}


@dataclass
class Watch:
    """What a page did that a test must not let pass silently."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("dialog", lambda d: (self.dialogs.append(f"{d.type}: {d.message}"), d.dismiss()))
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("console", self._console)
        page.on("request", lambda r: self.urls.append(r.url))

    def _console(self, message) -> None:
        text = message.text
        # A refused upload is an expected 4xx that Chromium logs as a failed resource load.
        if message.type == "error" and "Failed to load resource" not in text:
            self.errors.append(text)
        if "Content Security Policy" in text:
            self.errors.append(f"CSP violation: {text}")

    def assert_clean(self, key: str) -> None:
        assert not self.dialogs, f"a JavaScript dialog fired: {self.dialogs}"
        assert not self.errors, f"console errors: {self.errors}"
        leaked = [u for u in self.urls if key in u]
        assert not leaked, f"the API key appeared in a URL: {leaked}"


@pytest.fixture(scope="module")
@needs_markers("browser")
def playwright():
    """Playwright driving Debian's Chromium; a missing piece fails with what to install."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install playwright (the dev extra)", pytrace=False)
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: apt-get install -y chromium chromium-driver "
            "(or set VEILFACE_TEST_CHROMIUM); `playwright install` is not used",
            pytrace=False,
        )
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def people(lfw_people) -> list[list[Path]]:
    """Three LFW identities with at least three photos: two enrolled, one never enrolled."""
    chosen = [photos for photos in lfw_people if len(photos) >= 3][:3]
    assert len(chosen) == 3, "LFW needs three identities with three photos"
    return chosen


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("VEILFACE_TEST_SCREENSHOTS")
    if not folder:
        return tmp_path_factory.mktemp("screenshots")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def sign_in(page, stack, key: str) -> None:
    """Keyboard only: the key field has focus on arrival; type the key and press Enter."""
    page.goto(f"{stack.url}/console/login")
    page.wait_for_function("() => document.activeElement?.dataset.testid === 'login-key'")
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/(?!login)"))


@pytest.fixture(scope="module")
def desktop_tab(chromium, stack) -> Iterator[tuple]:
    """One desktop tab shared by the flow tests, in file order (its sessionStorage too)."""
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    try:
        yield page, watch
    finally:
        context.close()


@pytest.fixture()
def console_tab(desktop_tab, stack, admin_headers) -> tuple:
    """The shared tab, signed in on first use; what it records starts afresh for each test."""
    page, watch = desktop_tab
    if page.url == "about:blank":
        sign_in(page, stack, admin_headers["X-API-Key"])
    watch.dialogs.clear()
    watch.errors.clear()
    return page, watch


def goto(page, stack, name: str) -> None:
    page.goto(f"{stack.url}/console/{name}")
    page.get_by_test_id("signout").wait_for()


def controls_without_test_id(page) -> list[str]:
    return page.evaluate(
        """() => [...document.querySelectorAll('a, button, input, select, textarea, video, canvas, dialog')]
              .filter((el) => !el.dataset.testid).map((el) => el.outerHTML.slice(0, 80))"""
    )


def seg(name: str) -> str:
    """``name`` as one URL path segment."""
    return requests.utils.quote(name, safe="")


def wait_for_text(page, test_id: str, text: str, *, start: bool = False, timeout: float = SLOW_MS) -> None:
    """Wait until the element ``test_id`` contains (or starts with) ``text``."""
    test = "startsWith" if start else "includes"
    page.wait_for_function(
        f"([id, t]) => (document.querySelector(`[data-testid='${{id}}']`)?.textContent ?? '').{test}(t)",
        arg=[test_id, text],
        timeout=timeout,
    )


def api_subjects(stack, admin_headers, gallery: str) -> dict[str, dict]:
    r = requests.get(f"{stack.url}/v1/galleries/{seg(gallery)}/subjects", headers=admin_headers, timeout=30)
    assert r.status_code == 200, r.text
    return {s["subject"]: s for s in r.json()["subjects"]}


# -- headers and static checks ---------------------------------------------------------------


def test_console_responses_carry_security_headers(stack, admin_headers):
    urls = [f"/console/{name}" for name in CONSOLE_PAGES]
    urls += ["/console/static/console.js", "/console/static/console.css", "/console/api/status"]
    for url in urls:
        r = requests.get(f"{stack.url}{url}", headers=admin_headers, timeout=30, allow_redirects=False)
        assert r.status_code == 200, f"{url}: {r.status_code}"
        csp = r.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'", csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
        assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'", csp
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "Set-Cookie" not in r.headers, f"{url} sets a cookie"
    unauthenticated = requests.get(f"{stack.url}/console/api/status", timeout=30)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["X-Frame-Options"] == "DENY"


def test_pages_have_no_inline_script_and_script_never_writes_html(stack):
    for name in CONSOLE_PAGES:
        html = requests.get(f"{stack.url}/console/{name}", timeout=30).text
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert re.search(r'\bsrc="/console/static/[^"]+"', tag), f"inline script on {name}: {tag}"
        assert not re.search(r"<script\b[^>]*>(?!</script>)", html), f"inline script body on {name}"
        assert not re.search(r"\son[a-z]+\s*=", html), f"inline event handler on {name}"
        assert not re.search(r"\sstyle\s*=", html), f"inline style on {name}"
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), f"external resource on {name}"
    script = requests.get(f"{stack.url}/console/static/console.js", timeout=30).text
    code = re.sub(r"/\*.*?\*/", "", script, flags=re.S)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, f"console.js uses {sink}"


def test_status_report_gives_model_ckks_parameters_and_queues(stack, admin_headers):
    from veilface.crypto.params import DEFAULT_PARAMS

    body = requests.get(f"{stack.url}/console/api/status", headers=admin_headers, timeout=30).json()
    assert body["model"]["active"] and 0 < body["model"]["threshold"] < 1
    assert body["ckks"]["poly_modulus_degree"] == DEFAULT_PARAMS.poly_modulus_degree
    assert body["ckks"]["coeff_mod_bit_sizes"] == list(DEFAULT_PARAMS.coeff_mod_bit_sizes)
    assert body["keys"]["secret_key_holder"] == "gateway"
    assert set(body["queues"]) >= {"embed", "match"}
    assert all(isinstance(n, int) and n >= 0 for n in body["queues"].values())


# -- sign in and out -------------------------------------------------------------------------


@pytest.mark.browser
def test_sign_in_is_required_keeps_the_key_out_of_urls_and_cookies(
    chromium, stack, admin_headers, screenshots
):
    key = admin_headers["X-API-Key"]
    context = chromium.new_context(viewport=DESKTOP)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    try:
        page.goto(f"{stack.url}/console/galleries")
        page.wait_for_url("**/console/login")
        assert "Sign in" in page.get_by_test_id("flash").text_content()
        page.screenshot(path=screenshots / "login.png")
        assert not controls_without_test_id(page)

        page.get_by_test_id("login-key").fill("not-a-key")
        page.get_by_test_id("login-submit").click()
        error = page.get_by_test_id("login-error")
        error.wait_for()
        assert "not accepted" in error.text_content()

        page.get_by_test_id("login-key").fill(key)
        page.get_by_test_id("login-submit").click()
        page.wait_for_url("**/console/galleries")  # back where the operator was going
        assert page.evaluate("sessionStorage.getItem('veilface.console.apiKey')") == key
        assert page.evaluate("localStorage.length") == 0
        assert context.cookies() == []
        assert key not in page.content()

        page.get_by_test_id("signout").click()
        page.wait_for_url("**/console/login")
        assert "Signed out" in page.get_by_test_id("flash").text_content()
        assert page.evaluate("sessionStorage.getItem('veilface.console.apiKey')") is None
        page.goto(f"{stack.url}/console/enroll")
        page.wait_for_url("**/console/login")
        watch.assert_clean(key)
    finally:
        context.close()


@pytest.mark.browser
def test_every_control_has_a_test_id(console_tab, stack, admin_headers):
    page, watch = console_tab
    for name in CONSOLE_PAGES[1:]:
        goto(page, stack, name)
        missing = controls_without_test_id(page)
        assert not missing, f"{name}: controls without data-testid: {missing}"
    watch.assert_clean(admin_headers["X-API-Key"])


# -- the flow: enroll, identify, verify, manage ----------------------------------------------


@pytest.mark.browser
def test_enroll_two_identities_with_boxes_and_per_image_errors(
    console_tab, stack, admin_headers, people, screenshots
):
    page, watch = console_tab
    goto(page, stack, "enroll")
    first, second, _ = people
    page.get_by_test_id("enroll-gallery").fill(GALLERY)

    # A refused first photo still creates the subject, with no template: the Galleries page flags it.
    page.get_by_test_id("enroll-subject").fill(GROUP_SUBJECT)
    page.get_by_test_id("enroll-photos").set_input_files(
        [jpeg_upload("two-people.jpg", two_faces_jpeg(first[0], second[0]))]
    )
    page.get_by_test_id("enroll-submit").click()
    item = page.get_by_test_id("enroll-item").first
    item.and_(page.locator("[data-state='bad']")).wait_for(timeout=SLOW_MS)
    assert "Several faces" in item.get_by_test_id("enroll-item-status").text_content()

    page.get_by_test_id("enroll-clear").click()
    page.get_by_test_id("enroll-subject").fill(display_name(first[0]))
    page.get_by_test_id("enroll-main").check()
    page.get_by_test_id("enroll-photos").set_input_files([str(first[0]), str(first[1])])
    page.get_by_test_id("enroll-submit").click()
    summary = page.get_by_test_id("enroll-summary")
    wait_for_text(page, "enroll-summary", "2 of 2")
    assert f"enrolled for {display_name(first[0])} in {GALLERY}." in summary.text_content()

    page.get_by_test_id("enroll-clear").click()
    page.get_by_test_id("enroll-subject").fill(display_name(second[0]))
    uploads = [str(second[0]), str(second[1])]
    page.get_by_test_id("enroll-photos").set_input_files(uploads)
    page.get_by_test_id("enroll-photos").set_input_files(
        [jpeg_upload("notes.jpg", b"this is not an image\n" * 20), jpeg_upload("wall.jpg", faceless_jpeg())]
    )
    page.get_by_test_id("enroll-submit").click()
    wait_for_text(page, "enroll-summary", "2 failed")
    states = page.get_by_test_id("enroll-item").evaluate_all("items => items.map((i) => i.dataset.state)")
    assert states == ["ok", "ok", "bad", "bad"]
    texts = page.get_by_test_id("enroll-item-status").all_text_contents()
    assert texts[0].startswith(f"Enrolled as {display_name(second[0])}")
    assert "not a readable image" in texts[2] and "invalid_image" in texts[2]
    assert "No face found" in texts[3] and "no_face" in texts[3]
    boxes = page.get_by_test_id("enroll-canvas").evaluate_all("cs => cs.filter((c) => !c.hidden).length")
    assert boxes >= 2
    page.screenshot(path=screenshots / "enroll.png", full_page=True)

    subjects = api_subjects(stack, admin_headers, GALLERY)
    assert subjects[display_name(first[0])]["templates"] == 2
    assert subjects[display_name(second[0])]["templates"] == 2
    watch.assert_clean(admin_headers["X-API-Key"])


@pytest.mark.browser
def test_identify_finds_the_enrolled_person_and_calls_a_stranger_unknown(
    console_tab, stack, admin_headers, people, screenshots
):
    page, watch = console_tab
    goto(page, stack, "identify")
    first, _, stranger = people
    assert page.get_by_test_id("identify-gallery").input_value() == GALLERY  # remembered in the tab

    page.get_by_test_id("identify-photo").set_input_files(str(stranger[0]))
    page.get_by_test_id("identify-submit").click()
    page.get_by_test_id("identify-face").first.wait_for(timeout=SLOW_MS)
    names = page.get_by_test_id("identify-face-name").all_text_contents()
    assert all(n.endswith(("unknown", "not searchable")) for n in names), names

    page.get_by_test_id("identify-photo").set_input_files(str(first[2]))
    page.get_by_test_id("identify-submit").click()
    match = page.locator(f'[data-testid="identify-face"][data-match="{display_name(first[0])}"]')
    match.wait_for(timeout=SLOW_MS)
    candidate = match.get_by_test_id("identify-candidate").first
    assert candidate.get_by_test_id("identify-candidate-name").text_content() == display_name(first[0])
    assert 0 < float(candidate.get_by_test_id("identify-candidate-similarity").text_content()) <= 1
    assert "identified" in page.get_by_test_id("identify-summary").text_content()
    assert page.get_by_test_id("identify-canvas").is_visible()
    page.screenshot(path=screenshots / "identify.png", full_page=True)
    watch.assert_clean(admin_headers["X-API-Key"])


@pytest.mark.browser
def test_webcam_capture_identifies_the_person_in_front_of_the_camera(
    playwright, stack, admin_headers, people, screenshots, tmp_path
):
    first = people[0]
    video = write_y4m(first[2], tmp_path / "camera.y4m")
    fake_camera = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + fake_camera)
    try:
        page = browser.new_context(viewport=DESKTOP, permissions=["camera"]).new_page()
        watch = Watch()
        watch.attach(page)
        sign_in(page, stack, admin_headers["X-API-Key"])
        goto(page, stack, "identify")
        page.get_by_test_id("identify-gallery").fill(GALLERY)
        page.get_by_test_id("identify-webcam-start").click()
        capture = page.get_by_test_id("identify-webcam-capture")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=identify-webcam-video]').videoWidth > 0"
        )
        assert capture.is_enabled()
        # The camera hands focus to its Capture button, so Enter takes the picture.
        assert page.evaluate("document.activeElement.dataset.testid") == "identify-webcam-capture"
        page.keyboard.press("Enter")
        wait_for_text(page, "identify-webcam-status", "Captured webcam-1.jpg", timeout=10_000)
        page.get_by_test_id("identify-submit").click()
        page.locator(f'[data-testid="identify-face"][data-match="{display_name(first[0])}"]').wait_for(
            timeout=SLOW_MS
        )
        page.screenshot(path=screenshots / "identify-webcam.png", full_page=True)
        page.get_by_test_id("identify-webcam-stop").click()
        assert page.get_by_test_id("identify-webcam-video").is_hidden()
        watch.assert_clean(admin_headers["X-API-Key"])
    finally:
        browser.close()


@pytest.mark.browser
def test_identify_is_readable_on_a_phone_with_a_large_photo(
    chromium, stack, admin_headers, people, screenshots
):
    """A 2000-pixel photo on a phone: drawn scaled down, boxes where the API put them."""
    context = chromium.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    watch = Watch()
    watch.attach(page)
    try:
        sign_in(page, stack, admin_headers["X-API-Key"])
        goto(page, stack, "identify")
        page.get_by_test_id("identify-gallery").fill(GALLERY)
        page.get_by_test_id("identify-photo").set_input_files(
            jpeg_upload("large.jpg", upscaled_jpeg(people[1][2], 2000))
        )
        page.get_by_test_id("identify-submit").click()
        page.locator(f'[data-testid="identify-face"][data-match="{display_name(people[1][0])}"]').wait_for(
            timeout=SLOW_MS
        )
        width, height = page.get_by_test_id("identify-canvas").evaluate("(c) => [c.width, c.height]")
        assert max(width, height) == 1600
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
        page.screenshot(path=screenshots / "identify-phone.png", full_page=True)
        watch.assert_clean(admin_headers["X-API-Key"])
    finally:
        context.close()


@pytest.mark.browser
def test_verify_two_photos_and_a_photo_against_a_subject(
    console_tab, stack, admin_headers, people, screenshots
):
    page, watch = console_tab
    goto(page, stack, "verify")
    first, second, _ = people
    page.get_by_test_id("verify-photo1").set_input_files(str(first[0]))
    page.get_by_test_id("verify-photo2").set_input_files(str(first[2]))
    page.get_by_test_id("verify-submit").click()
    decision = page.get_by_test_id("verify-decision")
    page.locator("[data-testid=verify-decision][data-match]").wait_for(timeout=SLOW_MS)
    assert decision.get_attribute("data-match") == "true", decision.text_content()
    assert decision.text_content() == "Match: same person"
    similarity = float(page.get_by_test_id("verify-similarity").text_content())
    threshold = float(page.get_by_test_id("verify-threshold").text_content())
    assert similarity >= threshold
    page.screenshot(path=screenshots / "verify.png", full_page=True)

    page.get_by_test_id("verify-mode-subject").check()
    page.get_by_test_id("verify-gallery").fill(GALLERY)
    page.get_by_test_id("verify-subject").fill(display_name(second[0]))
    page.get_by_test_id("verify-photo").set_input_files(str(first[2]))
    page.get_by_test_id("verify-submit").click()
    wait_for_text(page, "verify-decision", "No match", start=True)
    assert decision.text_content() == f"No match: this is not {display_name(second[0])}"
    watch.assert_clean(admin_headers["X-API-Key"])


@pytest.mark.browser
def test_galleries_list_counts_and_delete_a_subject_after_confirmation(
    console_tab, stack, admin_headers, people, screenshots
):
    page, watch = console_tab
    goto(page, stack, "galleries")
    first, second, _ = people
    gone = display_name(second[0])
    row = page.get_by_test_id("subject-row").filter(has_text=gone)
    row.wait_for()
    api = api_subjects(stack, admin_headers, GALLERY)
    for subject in api.values():
        ui = page.get_by_test_id("subject-row").filter(
            has=page.get_by_test_id("subject-name").get_by_text(subject["subject"], exact=True)
        )
        assert ui.locator("td").nth(1).text_content() == str(subject["templates"])
        assert (ui.get_by_test_id("needs-reenrollment").count() == 1) == subject["needs_reenrollment"]
    stale = [s["subject"] for s in api.values() if s["needs_reenrollment"]]
    assert page.get_by_test_id("reenroll-summary").is_visible() == bool(stale)
    assert "active model" in page.get_by_test_id("subjects-summary").text_content()
    page.screenshot(path=screenshots / "galleries.png", full_page=True)

    # Keyboard only: Enter opens the dialog with Cancel focused; Escape keeps the subject.
    row.get_by_test_id("subject-delete").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_test_id("confirm-dialog")
    dialog.wait_for()
    assert gone in page.get_by_test_id("confirm-message").text_content()
    assert page.evaluate("document.activeElement.dataset.testid") == "confirm-cancel"
    page.screenshot(path=screenshots / "galleries-confirm.png")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert gone in api_subjects(stack, admin_headers, GALLERY)

    row.get_by_test_id("subject-delete").focus()
    page.keyboard.press("Enter")
    dialog.wait_for()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "confirm-ok"
    page.keyboard.press("Enter")
    wait_for_text(page, "subjects-summary", "Deleted", start=True, timeout=30_000)
    assert row.count() == 0
    remaining = api_subjects(stack, admin_headers, GALLERY)
    assert gone not in remaining and display_name(first[0]) in remaining
    watch.assert_clean(admin_headers["X-API-Key"])


@pytest.mark.browser
def test_status_shows_workers_model_ckks_and_key_holder(console_tab, stack, admin_headers, screenshots):
    from veilface.crypto.params import DEFAULT_PARAMS

    page, watch = console_tab
    goto(page, stack, "status")
    wait_for_text(page, "status-ready", "Ready", start=True, timeout=30_000)
    page.get_by_test_id("ckks-poly_modulus_degree").wait_for()
    assert page.get_by_test_id("status-workers-embedder").get_by_test_id("status-worker").count() >= 1
    assert page.get_by_test_id("status-workers-matcher").get_by_test_id("status-worker").count() >= 1
    ready = requests.get(f"{stack.url}/readyz", headers=admin_headers, timeout=30).json()["checks"]
    assert page.get_by_test_id("status-model-active").text_content() == ready["model"]["active"]
    shown = float(page.get_by_test_id("status-threshold").text_content())
    assert shown == pytest.approx(ready["model"]["threshold"], abs=5e-5)
    degree = page.get_by_test_id("ckks-poly_modulus_degree").text_content()
    assert degree == str(DEFAULT_PARAMS.poly_modulus_degree)
    assert page.get_by_test_id("status-key-holder").text_content() == "gateway"
    assert (
        "Only this gateway holds the CKKS secret key"
        in page.get_by_test_id("status-keys-holder").text_content()
    )
    assert page.get_by_test_id("status-queue").count() >= 2
    page.screenshot(path=screenshots / "status.png", full_page=True)
    watch.assert_clean(admin_headers["X-API-Key"])


@pytest.mark.browser
def test_status_with_a_read_key_shows_readiness_without_worker_details(chromium, stack, mysql_redis_env):
    """/readyz details need an admin key: the page falls back to the bare status and says so."""
    sessions = session_factory(make_engine(load_settings(mysql_redis_env)))
    with session_scope(sessions) as session:
        key = create_api_key(session, "console-status-read", "read")
    context = chromium.new_context(viewport=DESKTOP)
    try:
        page, watch = context.new_page(), Watch()
        watch.attach(page)
        sign_in(page, stack, key)
        goto(page, stack, "status")
        wait_for_text(page, "status-ready", "Worker details need an admin key", timeout=30_000)
        assert page.get_by_test_id("status-ready").text_content().startswith("Ready")
        assert page.get_by_test_id("status-workers-embedder").text_content() == "unknown"
        watch.assert_clean(key)
    finally:
        context.close()
        with session_scope(sessions) as session:
            row = session.scalars(select(ApiKey).where(ApiKey.name == "console-status-read")).one()
            revoke_api_key(session, row.id)


# -- hostile names -----------------------------------------------------------------------------


@pytest.mark.browser
def test_hostile_names_are_shown_as_text_and_never_run(
    console_tab, stack, admin_headers, people, screenshots
):
    page, watch = console_tab
    _, _, stranger = people
    goto(page, stack, "enroll")
    page.get_by_test_id("enroll-clear").click()
    page.get_by_test_id("enroll-gallery").fill(XSS_GALLERY)

    # A subject may be called anything printable, markup and '/' included: it stays text.
    page.get_by_test_id("enroll-gallery").fill("script-names")
    page.get_by_test_id("enroll-subject").fill(SCRIPT_SUBJECT)
    page.get_by_test_id("enroll-photos").set_input_files(str(stranger[0]))
    page.get_by_test_id("enroll-main").check()
    page.get_by_test_id("enroll-submit").click()
    page.locator("[data-testid=enroll-item][data-state=ok]").wait_for(timeout=SLOW_MS)
    assert (
        page.get_by_test_id("enroll-item-status")
        .first.text_content()
        .startswith(f"Enrolled as {SCRIPT_SUBJECT}")
    )
    page.get_by_test_id("enroll-clear").click()
    page.get_by_test_id("enroll-gallery").fill(XSS_GALLERY)
    page.get_by_test_id("enroll-photos").set_input_files(str(stranger[0]))

    page.get_by_test_id("enroll-subject").fill(XSS_SUBJECT)
    page.get_by_test_id("enroll-main").check()
    page.get_by_test_id("enroll-submit").click()
    page.locator("[data-testid=enroll-item][data-state=ok]").wait_for(timeout=SLOW_MS)
    status = page.get_by_test_id("enroll-item-status").first.text_content()
    assert status.startswith(f"Enrolled as {XSS_SUBJECT}")
    assert XSS_SUBJECT in page.get_by_test_id("enroll-summary").text_content()

    goto(page, stack, "identify")
    page.get_by_test_id("identify-gallery").fill(XSS_GALLERY)
    page.get_by_test_id("identify-photo").set_input_files(str(stranger[1]))
    page.get_by_test_id("identify-submit").click()
    page.get_by_test_id("identify-candidate-name").first.wait_for(timeout=SLOW_MS)
    assert XSS_SUBJECT in page.get_by_test_id("identify-candidate-name").all_text_contents()

    goto(page, stack, "galleries")
    page.get_by_test_id("gallery-open").get_by_text(XSS_GALLERY, exact=True).click()
    name = page.get_by_test_id("subject-name").get_by_text(XSS_SUBJECT, exact=True)
    name.wait_for()
    assert page.get_by_test_id("subjects-title").text_content() == f"Subjects of {XSS_GALLERY}"
    page.get_by_test_id("subject-row").filter(has=name).get_by_test_id("subject-delete").click()
    assert XSS_SUBJECT in page.get_by_test_id("confirm-message").text_content()
    page.screenshot(path=screenshots / "hostile-names.png")
    page.get_by_test_id("confirm-cancel").click()

    injected = page.evaluate(
        """() => ({images: document.querySelectorAll('img').length,
                   svgs: document.querySelectorAll('svg').length,
                   scripts: [...document.scripts].filter((s) => !s.src).length})"""
    )
    assert injected == {"images": 0, "svgs": 0, "scripts": 0}
    watch.assert_clean(admin_headers["X-API-Key"])
    requests.delete(f"{stack.url}/v1/galleries/{seg(XSS_GALLERY)}", headers=admin_headers, timeout=30)
