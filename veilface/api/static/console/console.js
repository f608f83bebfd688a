/*
 * Veilface console: one script for every page, no dependencies, no build step.
 *
 * Rules kept throughout: user-provided text (gallery and subject names, file names, server
 * messages) only ever reaches the page through textContent, option.value or canvas fillText,
 * never through innerHTML or an HTML string; the API key lives in this tab's sessionStorage
 * and only travels in the X-API-Key header of fetch() calls to this origin.
 */
(function () {
  "use strict";

  const body = document.body;
  const API_ROOT = body.dataset.apiRoot || "";
  const LOGIN_URL = body.dataset.loginUrl;
  const HOME_URL = body.dataset.homeUrl;
  const CONSOLE_PREFIX = LOGIN_URL.slice(0, LOGIN_URL.lastIndexOf("/") + 1);
  const STORE = {
    key: "veilface.console.apiKey",
    flash: "veilface.console.flash",
    next: "veilface.console.next",
    remember: "veilface.console.remember.",
  };
  const COLORS = { match: "#1faa55", unknown: "#f0a500", error: "#e0323a", face: "#2f80ed" };
  const SUBJECT_ROWS_SHOWN = 500;
  const MAX_CANVAS_SIDE = 1600;

  // -- small DOM helpers ----------------------------------------------------------------

  function byTestId(id, root) {
    return (root || document).querySelector('[data-testid="' + id + '"]');
  }

  /** Create an element; string children become text nodes, never markup. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "className") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "testid") node.dataset.testid = value;
      else if (name === "onclick") node.addEventListener("click", value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function setError(node, message) {
    node.textContent = message || "";
    show(node, Boolean(message));
  }

  function busy(button, isBusy) {
    button.disabled = isBusy;
    button.setAttribute("aria-busy", isBusy ? "true" : "false");
  }

  function fmt(value, digits) {
    return typeof value === "number" ? value.toFixed(digits === undefined ? 3 : digits) : "–";
  }

  function formatDate(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  // -- session: the API key in sessionStorage -------------------------------------------

  function apiKey() {
    return sessionStorage.getItem(STORE.key);
  }

  function flashNext(message, kind) {
    sessionStorage.setItem(STORE.flash, JSON.stringify({ message: message, kind: kind || "" }));
  }

  function signOut(message, kind) {
    sessionStorage.removeItem(STORE.key);
    if (message) flashNext(message, kind);
    window.location.replace(LOGIN_URL);
  }

  function showFlash() {
    const raw = sessionStorage.getItem(STORE.flash);
    const node = byTestId("flash");
    if (!raw || !node) return;
    sessionStorage.removeItem(STORE.flash);
    try {
      const flash = JSON.parse(raw);
      node.textContent = flash.message;
      node.className = "notice" + (flash.kind ? " " + flash.kind : "");
      show(node, true);
    } catch (_err) {
      /* a malformed flash is dropped */
    }
  }

  function flashNow(message, kind) {
    const node = byTestId("flash");
    node.textContent = message;
    node.className = "notice" + (kind ? " " + kind : "");
    show(node, true);
  }

  function remembered(name) {
    return sessionStorage.getItem(STORE.remember + name) || "";
  }

  function remember(name, value) {
    sessionStorage.setItem(STORE.remember + name, value);
  }

  // -- the JSON API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  const FRIENDLY = {
    no_face: "No face found in this photo.",
    multiple_faces: "Several faces in this photo: tick “enroll the main one” or crop the photo.",
    poor_quality: "The face is too small or too blurred to be used.",
    invalid_image: "This file is not a readable image (JPEG, PNG, WebP, GIF, BMP or TIFF).",
    image_too_large: "This image is too large.",
    forbidden: "This API key is read-only: enrolling and deleting need an admin key.",
    unknown_gallery: "There is no gallery with this name.",
    unknown_subject: "There is no such subject in this gallery.",
    client_key_gallery:
      "This gallery is encrypted under its client's key: the server cannot read its scores, so it cannot " +
      "decide a match. Enroll and identify through the Veilface client (veilface client …).",
    rate_limited: "Too many requests for this API key: wait a moment and retry.",
    unavailable: "The service is unavailable right now (a worker or a backend is down): retry later.",
    network: "The gateway could not be reached.",
  };

  /** What to tell the operator about a failed call: a plain sentence plus the error code. */
  function describe(err) {
    if (!(err instanceof ApiError)) return "Unexpected error: " + String(err && err.message ? err.message : err);
    const friendly = FRIENDLY[err.code];
    if (!friendly) return err.message + " (" + err.code + ")";
    return err.code === "multiple_faces" || err.code === "network" ? friendly : friendly + " (" + err.code + ")";
  }

  function apiUrl(path, query) {
    const url = new URL(API_ROOT + path, window.location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
    }
    return url;
  }

  async function request(method, url, headers, form) {
    let response;
    try {
      response = await fetch(url, {
        method: method,
        headers: Object.assign({ Accept: "application/json" }, headers),
        body: form,
        credentials: "omit",
        cache: "no-store",
        redirect: "error",
        referrerPolicy: "no-referrer",
      });
    } catch (_err) {
      throw new ApiError(0, "network", FRIENDLY.network);
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch (_err) {
      payload = null;
    }
    return { response: response, payload: payload };
  }

  function failure(response, payload) {
    const error = payload && payload.error ? payload.error : {};
    return new ApiError(
      response.status,
      error.code || "http_" + response.status,
      error.message || response.statusText || "request failed",
    );
  }

  /** Call the API with the signed-in key; a 401 signs out, any other failure throws ApiError. */
  async function api(method, path, options) {
    const opts = options || {};
    const key = apiKey();
    if (!key) {
      signOut("Sign in to use the console.");
      throw new ApiError(401, "unauthorized", "not signed in");
    }
    const { response, payload } = await request(method, apiUrl(path, opts.query), { "X-API-Key": key }, opts.form);
    if (response.ok) return payload;
    if (response.status === 401) signOut("The API key was not accepted any more; sign in again.", "error");
    throw failure(response, payload);
  }

  function seg(name) {
    return encodeURIComponent(name);
  }

  const paths = {
    galleries: () => "/v1/galleries",
    gallery: (g) => "/v1/galleries/" + seg(g),
    subjects: (g) => "/v1/galleries/" + seg(g) + "/subjects",
    subject: (g, s) => "/v1/galleries/" + seg(g) + "/subjects/" + seg(s),
    faces: (g, s) => "/v1/galleries/" + seg(g) + "/subjects/" + seg(s) + "/faces",
    verifySubject: (g, s) => "/v1/galleries/" + seg(g) + "/subjects/" + seg(s) + "/verify",
    identify: (g) => "/v1/galleries/" + seg(g) + "/identify",
    verifyPair: () => "/v1/verify",
    status: () => CONSOLE_PREFIX.slice(API_ROOT.length) + "api/status",
  };

  /** The API's own rule for names (1..limit printable characters; no '/' in gallery names), checked early. */
  function nameProblem(value, what, limit) {
    if (!value.trim()) return "Enter a " + what + " name.";
    if (value.length > limit) return "The " + what + " name is longer than " + limit + " characters.";
    if (/[\u0000-\u001f\u007f]/.test(value)) return "The " + what + " name contains control characters.";
    if (what === "gallery" && value.includes("/")) return "The gallery name cannot contain '/'.";
    if (value === "." || value === "..") return "The " + what + " name cannot be '.' or '..'.";
    return null;
  }

  function imageForm(fields) {
    const form = new FormData();
    for (const [name, file] of fields) form.append(name, file, file.name || name + ".jpg");
    return form;
  }

  async function fillGalleryNames() {
    const list = document.getElementById("gallery-names");
    if (!list) return [];
    try {
      const data = await api("GET", paths.galleries());
      list.replaceChildren(...data.galleries.map((g) => el("option", { value: g.name })));
      return data.galleries;
    } catch (_err) {
      return [];
    }
  }

  function bindRemembered() {
    for (const input of document.querySelectorAll("input[data-remember]")) {
      const name = input.dataset.remember;
      if (!input.value) input.value = remembered(name);
      input.addEventListener("change", () => remember(name, input.value));
    }
  }

  // -- images and face boxes ------------------------------------------------------------

  /** Decode a File or Blob into an <img>; null when the browser cannot read it. */
  async function loadImage(blob) {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.src = url;
    try {
      await img.decode();
      return img;
    } catch (_err) {
      return null;
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  /**
   * Draw ``img`` on ``canvas`` with a labelled box per face, at most MAX_CANVAS_SIDE pixels a side.
   * ``faces``: [{box: [x, y, w, h], label, color}] in the image's pixels (what the API returns).
   */
  function drawFaces(canvas, img, faces) {
    const factor = Math.min(1, MAX_CANVAS_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
    const width = Math.round(img.naturalWidth * factor);
    const height = Math.round(img.naturalHeight * factor);
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, width, height);
    const scale = Math.max(width, height);
    const line = Math.max(2, Math.round(scale / 160));
    const fontSize = Math.max(12, Math.round(scale / 24));
    ctx.font = "600 " + fontSize + "px system-ui, sans-serif";
    ctx.textBaseline = "top";
    for (const face of faces || []) {
      const [x, y, w, h] = face.box.map((v) => v * factor);
      ctx.lineWidth = line;
      ctx.strokeStyle = face.color;
      ctx.strokeRect(x, y, w, h);
      if (!face.label) continue;
      const pad = Math.round(fontSize / 4);
      const textWidth = Math.min(ctx.measureText(face.label).width, width - 2 * pad);
      const boxHeight = fontSize + 2 * pad;
      const left = Math.max(0, Math.min(x - line / 2, width - textWidth - 2 * pad));
      const top = y - boxHeight >= 0 ? y - boxHeight : Math.min(y + h, height - boxHeight);
      ctx.fillStyle = face.color;
      ctx.fillRect(left, top, textWidth + 2 * pad, boxHeight);
      ctx.fillStyle = "#0b1117";
      ctx.fillText(face.label, left + pad, top + pad, textWidth);
    }
    show(canvas, true);
  }

  // -- webcam ---------------------------------------------------------------------------

  /** Wire the webcam fieldset ``prefix``; ``onCapture(file)`` receives each captured JPEG. */
  function webcam(prefix, onCapture) {
    const start = byTestId(prefix + "-webcam-start");
    const capture = byTestId(prefix + "-webcam-capture");
    const stop = byTestId(prefix + "-webcam-stop");
    const video = byTestId(prefix + "-webcam-video");
    const status = byTestId(prefix + "-webcam-status");
    let stream = null;
    let shots = 0;

    function halt() {
      if (stream) stream.getTracks().forEach((track) => track.stop());
      stream = null;
      video.srcObject = null;
      show(video, false);
      start.disabled = false;
      capture.disabled = true;
      stop.disabled = true;
    }

    start.addEventListener("click", async () => {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        status.textContent = "No camera access here: browsers allow it only over HTTPS or on localhost.";
        return;
      }
      status.textContent = "Starting the camera…";
      try {
        stream = await navigator.mediaDevices.getUserMedia({
          video: { facingMode: "user", width: { ideal: 1280 }, height: { ideal: 720 } },
          audio: false,
        });
      } catch (err) {
        status.textContent = "The camera could not be started (" + (err && err.name ? err.name : "error") + ").";
        return;
      }
      video.srcObject = stream;
      show(video, true);
      try {
        await video.play();
      } catch (_err) {
        /* autoplay of a muted stream is allowed; ignore a race with stop */
      }
      start.disabled = true;
      capture.disabled = false;
      stop.disabled = false;
      status.textContent = "Camera on. Frame the face and press " + capture.textContent.trim() + ".";
      capture.focus();
    });

    capture.addEventListener("click", async () => {
      if (!stream || !video.videoWidth) {
        status.textContent = "The camera has no picture yet; try again in a moment.";
        return;
      }
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
      if (!blob) {
        status.textContent = "The frame could not be captured.";
        return;
      }
      shots += 1;
      const file = new File([blob], "webcam-" + shots + ".jpg", { type: "image/jpeg" });
      status.textContent = "Captured " + file.name + ".";
      onCapture(file);
    });

    stop.addEventListener("click", () => {
      halt();
      status.textContent = "Camera off.";
      start.focus();
    });
    window.addEventListener("pagehide", halt);
  }

  // -- confirmation dialog --------------------------------------------------------------

  /** Ask in the page's modal <dialog>; resolves true only when the operator confirms. */
  function confirmAction(title, message, okLabel) {
    const dialog = byTestId("confirm-dialog");
    byTestId("confirm-title", dialog).textContent = title;
    byTestId("confirm-message", dialog).textContent = message;
    byTestId("confirm-ok", dialog).textContent = okLabel;
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
      byTestId("confirm-cancel", dialog).focus();
    });
  }

  // -- pages ----------------------------------------------------------------------------

  function initLogin() {
    if (apiKey()) {
      window.location.replace(HOME_URL);
      return;
    }
    const form = byTestId("login-form");
    const input = byTestId("login-key");
    const error = byTestId("login-error");
    const submit = byTestId("login-submit");
    input.focus();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        setError(error, "Enter an API key.");
        input.focus();
        return;
      }
      setError(error, "");
      busy(submit, true);
      try {
        const { response, payload } = await request("GET", apiUrl(paths.galleries()), { "X-API-Key": key });
        if (response.ok) {
          sessionStorage.setItem(STORE.key, key);
          input.value = "";
          const next = sessionStorage.getItem(STORE.next);
          sessionStorage.removeItem(STORE.next);
          const safeNext = next && next.startsWith(CONSOLE_PREFIX) && !next.startsWith("//") ? next : HOME_URL;
          window.location.assign(safeNext);
          return;
        }
        const err = failure(response, payload);
        setError(error, response.status === 401 ? "This API key was not accepted." : describe(err));
      } catch (err) {
        setError(error, describe(err));
      } finally {
        busy(submit, false);
      }
      input.select();
      input.focus();
    });
  }

  function initEnroll() {
    const form = byTestId("enroll-form");
    const gallery = byTestId("enroll-gallery");
    const subject = byTestId("enroll-subject");
    const photos = byTestId("enroll-photos");
    const mainFace = byTestId("enroll-main");
    const submit = byTestId("enroll-submit");
    const error = byTestId("enroll-error");
    const list = byTestId("enroll-result");
    const empty = byTestId("enroll-empty");
    const summary = byTestId("enroll-summary");
    let items = [];

    function refreshEmpty() {
      show(empty, items.length === 0);
    }

    function setState(item, text, kind) {
      item.state.textContent = text;
      item.state.className = "state " + kind;
      item.li.dataset.state = kind;
    }

    function add(file) {
      const canvas = el("canvas", { testid: "enroll-canvas", role: "img", "aria-label": "Photo " + file.name });
      const state = el("p", { className: "state pending", testid: "enroll-item-status", text: "Ready to enroll." });
      const remove = el("button", {
        type: "button",
        className: "button ghost small",
        testid: "enroll-item-remove",
        "aria-label": "Remove " + file.name,
        text: "Remove",
      });
      const li = el("li", { testid: "enroll-item" }, canvas, el("p", { className: "photo-name", text: file.name }), state, remove);
      const item = { file: file, li: li, canvas: canvas, state: state, img: null, doneFor: null, ready: null };
      remove.addEventListener("click", () => {
        items = items.filter((other) => other !== item);
        li.remove();
        refreshEmpty();
        photos.focus();
      });
      items.push(item);
      list.append(li);
      refreshEmpty();
      // The preview is drawn before this item's result: submitting waits on ``ready``.
      item.ready = loadImage(file).then((img) => {
        item.img = img;
        if (img) drawFaces(canvas, img, []);
        else {
          show(canvas, false);
          setState(item, "No preview: this browser cannot read the file. The server will check it.", "pending");
        }
      });
    }

    photos.addEventListener("change", () => {
      for (const file of photos.files) add(file);
      photos.value = "";
      summary.textContent = "";
    });
    webcam("enroll", (file) => add(file));
    byTestId("enroll-clear").addEventListener("click", () => {
      items = [];
      list.replaceChildren();
      summary.textContent = "";
      photos.value = "";
      refreshEmpty();
    });
    refreshEmpty();

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const g = gallery.value;
      const s = subject.value;
      const problem = nameProblem(g, "gallery", 128) || nameProblem(s, "subject", 255);
      if (problem) {
        setError(error, problem);
        (nameProblem(g, "gallery", 128) ? gallery : subject).focus();
        return;
      }
      const target = g + "\u0000" + s;
      const todo = items.filter((item) => item.doneFor !== target);
      if (!todo.length) {
        setError(error, items.length ? "Every photo is already enrolled for this subject." : "Add at least one photo.");
        photos.focus();
        return;
      }
      setError(error, "");
      remember("gallery", g);
      busy(submit, true);
      let enrolled = 0;
      let failed = 0;
      try {
        for (const item of todo) {
          await item.ready;
          setState(item, "Enrolling…", "pending");
          try {
            const result = await api("POST", paths.faces(g, s), {
              form: imageForm([["image", item.file]]),
              query: { face: mainFace.checked ? "main" : "" },
            });
            const face = result.faces[0];
            item.doneFor = target;
            enrolled += 1;
            setState(
              item,
              "Enrolled as " + s + " · template #" + result.template_ids[0] + " · model " + result.model_version,
              "ok",
            );
            if (item.img && face) drawFaces(item.canvas, item.img, [{ box: face.box, label: s, color: COLORS.match }]);
          } catch (err) {
            failed += 1;
            setState(item, describe(err), "bad");
            const perImage = ["no_face", "multiple_faces", "poor_quality", "invalid_image", "image_too_large"];
            if (!(err instanceof ApiError) || !perImage.includes(err.code)) {
              setError(error, describe(err));
              break;
            }
          }
        }
      } finally {
        busy(submit, false);
      }
      summary.textContent =
        enrolled + " of " + todo.length + " photo(s) enrolled for " + s + " in " + g + (failed ? "; " + failed + " failed." : ".");
      fillGalleryNames();
    });
  }

  function initIdentify() {
    const form = byTestId("identify-form");
    const gallery = byTestId("identify-gallery");
    const topK = byTestId("identify-top-k");
    const thresholdInput = byTestId("identify-threshold");
    const thresholdHint = byTestId("identify-threshold-hint");
    const photoInput = byTestId("identify-photo");
    const submit = byTestId("identify-submit");
    const error = byTestId("identify-error");
    const summary = byTestId("identify-summary");
    const canvas = byTestId("identify-canvas");
    const facesList = byTestId("identify-faces");
    let photo = null;
    let img = null;
    let previewed = Promise.resolve();
    let modelThreshold = null;

    api("GET", paths.status())
      .then((status) => {
        modelThreshold = status.model.threshold;
        thresholdHint.textContent = "Empty: the model's threshold (" + fmt(modelThreshold, 4) + ", " + status.model.active + ").";
      })
      .catch(() => undefined);

    function use(file) {
      photo = file;
      img = null;
      facesList.replaceChildren();
      previewed = loadImage(file).then((decoded) => {
        if (photo !== file) return;
        img = decoded;
        if (img) drawFaces(canvas, img, []);
        else show(canvas, false);
        summary.textContent = img ? "Ready: press Identify." : "This browser cannot preview the file; the server will check it.";
      });
    }

    photoInput.addEventListener("change", () => {
      if (photoInput.files[0]) use(photoInput.files[0]);
    });
    webcam("identify", (file) => {
      photoInput.value = "";
      use(file);
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const g = gallery.value;
      const problem = nameProblem(g, "gallery", 128);
      if (problem || !photo) {
        setError(error, problem || "Choose a photo or capture one first.");
        (problem ? gallery : photoInput).focus();
        return;
      }
      const k = Number(topK.value);
      if (!Number.isInteger(k) || k < 1 || k > 100) {
        setError(error, "Candidates per face must be a whole number from 1 to 100.");
        topK.focus();
        return;
      }
      const override = thresholdInput.value.trim();
      if (override && !(Number(override) >= -1 && Number(override) <= 1)) {
        setError(error, "The threshold is a cosine similarity between -1 and 1.");
        thresholdInput.focus();
        return;
      }
      setError(error, "");
      remember("gallery", g);
      busy(submit, true);
      await previewed;
      summary.textContent = "Searching the encrypted gallery…";
      facesList.replaceChildren();
      try {
        const result = await api("POST", paths.identify(g), {
          form: imageForm([["image", photo]]),
          query: { top_k: k, threshold: override },
        });
        render(result.faces, override ? Number(override) : modelThreshold);
      } catch (err) {
        summary.textContent = "";
        setError(error, describe(err));
      } finally {
        busy(submit, false);
      }
    });

    function render(faces, threshold) {
      const boxes = [];
      let known = 0;
      faces.forEach((face, index) => {
        const n = index + 1;
        const best = face.candidates[0];
        let title;
        let color;
        let badge;
        if (face.quality_reason) {
          title = "Face " + n + ": not searchable";
          color = COLORS.error;
          badge = el("span", { className: "badge bad", text: face.quality_reason });
        } else if (face.match !== null && face.match !== undefined) {
          known += 1;
          title = "Face " + n + ": " + face.match;
          color = COLORS.match;
          badge = el("span", { className: "badge ok", text: "identified" });
        } else {
          title = "Face " + n + ": unknown";
          color = COLORS.unknown;
          badge = el("span", { className: "badge warn", text: "below threshold" });
        }
        const label = face.quality_reason
          ? n + ": ?"
          : n + ": " + (face.match === null || face.match === undefined ? "unknown" : face.match) + (best ? " " + fmt(best.similarity, 2) : "");
        boxes.push({ box: face.box, label: label, color: color });
        const rows = face.candidates.map((c) =>
          el(
            "tr",
            { testid: "identify-candidate" },
            el("td", { text: c.subject, testid: "identify-candidate-name" }),
            el("td", { className: "num", text: fmt(c.similarity), testid: "identify-candidate-similarity" }),
          ),
        );
        const table = rows.length
          ? el(
              "table",
              {},
              el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Candidate" }), el("th", { scope: "col", className: "num", text: "Similarity" }))),
              el("tbody", {}, ...rows),
            )
          : el("p", { className: "hint", text: face.quality_reason ? "This face was not searched." : "No candidate in this gallery." });
        facesList.append(
          el(
            "li",
            { testid: "identify-face", "data-match": face.match || "" },
            el("h3", { className: "face-title" }, el("span", { testid: "identify-face-name", text: title }), " ", badge),
            table,
          ),
        );
      });
      if (img) {
        drawFaces(canvas, img, boxes);
        canvas.setAttribute("aria-label", "Photo with " + faces.length + " face(s) marked: " + boxes.map((b) => b.label).join(", "));
      }
      const cut = typeof threshold === "number" ? " Threshold " + fmt(threshold, 4) + "." : "";
      summary.textContent = faces.length
        ? faces.length + " face(s): " + known + " identified, " + (faces.length - known) + " unknown or unusable." + cut
        : "No face found in this photo.";
    }
  }

  function initVerify() {
    const form = byTestId("verify-form");
    const submit = byTestId("verify-submit");
    const error = byTestId("verify-error");
    const gallery = byTestId("verify-gallery");
    const subject = byTestId("verify-subject");
    const decision = byTestId("verify-decision");
    const similarity = byTestId("verify-similarity");
    const thresholdOut = byTestId("verify-threshold");
    const previews = byTestId("verify-previews");
    const sections = document.querySelectorAll("[data-mode]");

    function mode() {
      return form.querySelector('input[name="mode"]:checked').value;
    }

    function syncMode() {
      for (const section of sections) show(section, section.dataset.mode === mode());
    }

    for (const radio of form.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", syncMode);
    syncMode();

    async function fillSubjects() {
      const list = document.getElementById("subject-names");
      if (nameProblem(gallery.value, "gallery", 128)) return;
      try {
        const data = await api("GET", paths.subjects(gallery.value));
        list.replaceChildren(...data.subjects.map((s) => el("option", { value: s.subject })));
      } catch (_err) {
        list.replaceChildren();
      }
    }
    gallery.addEventListener("change", fillSubjects);
    if (gallery.value) fillSubjects();

    async function preview(files) {
      const canvases = [];
      for (const file of files) {
        const img = await loadImage(file);
        if (!img) continue;
        const canvas = el("canvas", { role: "img", "aria-label": "Photo " + file.name });
        drawFaces(canvas, img, []);
        canvases.push(canvas);
      }
      previews.replaceChildren(...canvases);
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let call;
      let files;
      let who = null;
      if (mode() === "pair") {
        const first = byTestId("verify-photo1");
        const second = byTestId("verify-photo2");
        if (!first.files[0] || !second.files[0]) {
          setError(error, "Choose two photos.");
          (first.files[0] ? second : first).focus();
          return;
        }
        files = [first.files[0], second.files[0]];
        call = () => api("POST", paths.verifyPair(), { form: imageForm([["image1", files[0]], ["image2", files[1]]]) });
      } else {
        const photo = byTestId("verify-photo");
        const problem = nameProblem(gallery.value, "gallery", 128) || nameProblem(subject.value, "subject", 255);
        if (problem || !photo.files[0]) {
          setError(error, problem || "Choose a photo.");
          (problem ? (nameProblem(gallery.value, "gallery", 128) ? gallery : subject) : photo).focus();
          return;
        }
        const g = gallery.value;
        who = subject.value;
        files = [photo.files[0]];
        remember("gallery", g);
        call = () => api("POST", paths.verifySubject(g, who), { form: imageForm([["image", files[0]]]) });
      }
      setError(error, "");
      busy(submit, true);
      decision.textContent = "Comparing under encryption…";
      decision.className = "decision";
      similarity.textContent = "–";
      thresholdOut.textContent = "–";
      preview(files);
      try {
        const result = await call();
        similarity.textContent = fmt(result.similarity);
        thresholdOut.textContent = fmt(result.threshold, 4);
        decision.dataset.match = String(result.match);
        decision.className = "decision " + (result.match ? "ok" : "bad");
        if (who === null) decision.textContent = result.match ? "Match: same person" : "No match: different people";
        else decision.textContent = result.match ? "Match: this is " + who : "No match: this is not " + who;
      } catch (err) {
        decision.textContent = "No decision.";
        delete decision.dataset.match;
        setError(error, describe(err));
      } finally {
        busy(submit, false);
      }
    });
  }

  function initGalleries() {
    const refresh = byTestId("galleries-refresh");
    const gSummary = byTestId("galleries-summary");
    const gBody = byTestId("galleries-table").tBodies[0];
    const panel = byTestId("subjects-panel");
    const sTitle = byTestId("subjects-title");
    const sSummary = byTestId("subjects-summary");
    const sBody = byTestId("subjects-table").tBodies[0];
    const reenroll = byTestId("reenroll-summary");
    const filter = byTestId("subjects-filter");
    const more = byTestId("subjects-more");
    const deleteGallery = byTestId("gallery-delete");
    sSummary.tabIndex = -1;
    gSummary.tabIndex = -1;
    let current = null;
    let subjects = [];
    let active = "";
    let notice = "";

    async function loadGalleries() {
      gSummary.textContent = "Loading…";
      let data;
      try {
        data = await api("GET", paths.galleries());
      } catch (err) {
        gSummary.textContent = describe(err);
        return;
      }
      gBody.replaceChildren(
        ...data.galleries.map((g) =>
          el(
            "tr",
            { testid: "gallery-row", "aria-selected": g.name === current ? "true" : "false" },
            el("td", {}, el("button", { type: "button", className: "link-button", testid: "gallery-open", text: g.name, onclick: () => openGallery(g.name) })),
            el("td", { className: "num", text: g.subjects }),
            el("td", { className: "num", text: g.templates }),
            el("td", { text: formatDate(g.created_at) }),
          ),
        ),
      );
      gSummary.textContent = data.galleries.length
        ? data.galleries.length + " galler" + (data.galleries.length === 1 ? "y" : "ies") + ". Open one to see its subjects."
        : "No gallery yet: enroll someone to create one.";
      const wanted = current || remembered("gallery");
      if (wanted && data.galleries.some((g) => g.name === wanted)) await openGallery(wanted, false);
      else if (current) {
        current = null;
        show(panel, false);
      }
    }

    async function openGallery(name, focus) {
      if (name !== current) notice = "";
      current = name;
      remember("gallery", name);
      for (const row of gBody.rows) {
        row.setAttribute("aria-selected", byTestId("gallery-open", row).textContent === name ? "true" : "false");
      }
      show(panel, true);
      sTitle.textContent = "Subjects of " + name;
      sSummary.textContent = "Loading…";
      try {
        const data = await api("GET", paths.subjects(name));
        subjects = data.subjects;
        active = data.active_model_version;
      } catch (err) {
        subjects = [];
        notice = describe(err);
      }
      renderSubjects();
      if (focus !== false) sSummary.focus();
    }

    function renderSubjects() {
      const needle = filter.value.trim().toLowerCase();
      const matching = subjects.filter((s) => !needle || s.subject.toLowerCase().includes(needle));
      const shown = matching.slice(0, SUBJECT_ROWS_SHOWN);
      sBody.replaceChildren(...shown.map(subjectRow));
      show(more, matching.length > shown.length);
      more.textContent = "Showing " + shown.length + " of " + matching.length + " subjects: filter to find others.";
      const stale = subjects.filter((s) => s.needs_reenrollment).length;
      sSummary.textContent =
        (notice ? notice + " " : "") + subjects.length + " subject(s); active model " + (active || "unknown") + ".";
      show(reenroll, stale > 0);
      reenroll.textContent =
        stale + " subject(s) have no template made by the active model " + active +
        ": they cannot be found until they are enrolled again.";
    }

    function subjectRow(s) {
      const versions = Object.entries(s.model_versions || {}).map(([v, n]) => v + " × " + n);
      const status = s.templates === 0
        ? el("span", { className: "badge bad", testid: "needs-reenrollment", text: "no template" })
        : s.needs_reenrollment
          ? el("span", { className: "badge warn", testid: "needs-reenrollment", text: "needs re-enrollment" })
          : el("span", { className: "badge ok", text: "current" });
      const remove = el("button", {
        type: "button",
        className: "button danger ghost small",
        testid: "subject-delete",
        "aria-label": "Delete subject " + s.subject,
        text: "Delete",
      });
      remove.addEventListener("click", () => removeSubject(s));
      return el(
        "tr",
        { testid: "subject-row" },
        el("td", { testid: "subject-name", text: s.subject }),
        el("td", { className: "num", text: s.templates }),
        el("td", { className: "mono", text: versions.join(", ") || "–" }),
        el("td", {}, status),
        el("td", {}, remove),
      );
    }

    async function removeSubject(s) {
      const g = current;
      const ok = await confirmAction(
        "Delete subject?",
        "Delete “" + s.subject + "” from gallery “" + g + "” with its " + s.templates +
          " encrypted template(s)? It will no longer be found. This cannot be undone.",
        "Delete subject",
      );
      if (!ok) return;
      try {
        const result = await api("DELETE", paths.subject(g, s.subject));
        notice = "Deleted " + result.subject + " (" + result.deleted_templates + " template(s)).";
      } catch (err) {
        notice = describe(err);
      }
      await loadGalleries();
      sSummary.focus();
    }

    deleteGallery.addEventListener("click", async () => {
      const g = current;
      if (g === null) return;
      const ok = await confirmAction(
        "Delete gallery?",
        "Delete gallery “" + g + "” with all " + subjects.length +
          " subject(s) and their encrypted templates? This cannot be undone.",
        "Delete gallery",
      );
      if (!ok) return;
      try {
        await api("DELETE", paths.gallery(g));
        flashNow("Deleted gallery " + g + ".");
        current = null;
        sessionStorage.removeItem(STORE.remember + "gallery");
        show(panel, false);
      } catch (err) {
        notice = describe(err);
        renderSubjects();
        return;
      }
      await loadGalleries();
      gSummary.focus();
    });

    filter.addEventListener("input", renderSubjects);
    refresh.addEventListener("click", () => {
      notice = "";
      loadGalleries();
    });
    loadGalleries();
  }

  const CKKS_LABELS = {
    poly_modulus_degree: "Ring degree (N)",
    coeff_mod_bit_sizes: "Modulus chain (bits)",
    scale_bits: "Scale",
    max_dim: "Largest template dimension",
    slots: "Slots per ciphertext",
    block_capacity: "Templates per packed block",
  };

  function ckksValue(name, value) {
    if (name === "coeff_mod_bit_sizes" && Array.isArray(value)) {
      return value.join(", ") + " (" + value.reduce((a, b) => a + b, 0) + " bits in all)";
    }
    if (name === "scale_bits") return "2^" + value;
    return Array.isArray(value) ? value.join(", ") : String(value);
  }

  function facts(node, pairs) {
    const children = [];
    for (const [term, value, testid] of pairs) {
      children.push(el("dt", { text: term }), el("dd", { text: value, testid: testid }));
    }
    node.replaceChildren(...children);
  }

  function initStatus() {
    const ready = byTestId("status-ready");
    const embedders = byTestId("status-workers-embedder");
    const matchers = byTestId("status-workers-matcher");
    const queues = byTestId("status-queues");
    const model = byTestId("status-model");
    const backends = byTestId("status-backends");
    const ckks = byTestId("status-ckks");
    const keys = byTestId("status-keys");
    const holder = byTestId("status-keys-holder");
    const refresh = byTestId("status-refresh");

    function workerList(node, check, kind) {
      if (!check) {
        node.replaceChildren(el("li", { text: "unknown" }));
        return;
      }
      const items = (check.online || []).map((w) => {
        const stale = (check.wrong_model_version || []).includes(w.name);
        return el(
          "li",
          { testid: "status-worker" },
          el("span", { className: "badge " + (stale ? "warn" : "ok"), text: stale ? "wrong model" : "online" }),
          " " + [w.name, w.model_version, w.provider].filter(Boolean).join(" · "),
        );
      });
      for (const name of check.refused_foreign_keys || []) {
        items.push(el("li", {}, el("span", { className: "badge bad", text: "refused" }), " " + name + " · other key set"));
      }
      if (!items.length) items.push(el("li", {}, el("span", { className: "badge bad", text: "none" }), " no " + kind + " online"));
      if (check.error) items.push(el("li", { text: "check failed: " + check.error }));
      node.replaceChildren(...items);
    }

    async function load() {
      busy(refresh, true);
      let report = null;
      try {
        // Every check needs an admin key; a read key gets readiness alone, asked without the key.
        let { response, payload } = await request("GET", apiUrl("/readyz"), { "X-API-Key": apiKey() });
        const detailed = response.status !== 403;
        if (!detailed) ({ response, payload } = await request("GET", apiUrl("/readyz"), {}));
        report = payload;
        const failing = Object.entries((payload && payload.checks) || {})
          .filter(([, c]) => !c.ok)
          .map(([name]) => name);
        ready.textContent =
          (response.ok
            ? "Ready: every check passes."
            : "Not ready: " + (failing.join(", ") || "status " + response.status) + ".") +
          (detailed ? "" : " Worker details need an admin key.");
        ready.className = "summary notice " + (response.ok ? "" : "error");
      } catch (err) {
        ready.textContent = describe(err);
        ready.className = "summary notice error";
      }
      const checks = (report && report.checks) || {};
      workerList(embedders, checks.embedder, "embedder");
      workerList(matchers, checks.he_matcher, "he-matcher");
      const ok = (c) => (c ? (c.ok ? "ok" : "failing" + (c.error ? " (" + c.error + ")" : "")) : "unknown");
      facts(backends, [
        ["Database", ok(checks.database), "status-database"],
        ["Broker", ok(checks.broker), "status-broker"],
      ]);
      let status = null;
      try {
        status = await api("GET", paths.status());
      } catch (err) {
        flashNow(describe(err), "error");
      }
      const m = (status && status.model) || checks.model || {};
      facts(model, [
        ["Active model", m.active || "unknown", "status-model-active"],
        ["Threshold", fmt(m.threshold, 4), "status-threshold"],
        ["Embedding size", m.dim ? String(m.dim) : "–", "status-model-dim"],
        ["Model file", checks.model ? (checks.model.ok ? "present" : "missing") : "unknown", "status-model-file"],
      ]);
      if (status && status.queues) {
        facts(queues, Object.entries(status.queues).map(([name, n]) => [name, n + " waiting", "status-queue"]));
      } else {
        facts(queues, [["Depths", "not available from the broker; see the worker lists above", "status-queue"]]);
      }
      if (status && status.ckks) {
        facts(ckks, Object.entries(status.ckks).map(([k, v]) => [CKKS_LABELS[k] || k, ckksValue(k, v), "ckks-" + k]));
      } else {
        facts(ckks, [["Parameters", "not available", "ckks-none"]]);
      }
      const fingerprint = (status && status.keys.fingerprint) || (checks.keys && checks.keys.fingerprint) || "";
      holder.textContent =
        "Only this gateway holds the CKKS secret key. Workers receive the public context alone (no secret key) " +
        "and refuse to start with one; every worker listed above runs on the gateway's key set.";
      const countOnline = (c) => (c && c.online ? c.online.length : 0);
      facts(keys, [
        ["Secret key holder", status ? status.keys.secret_key_holder : "gateway", "status-key-holder"],
        ["Workers hold", status ? status.keys.workers_hold : "public context only", "status-workers-hold"],
        ["Key set fingerprint", fingerprint ? fingerprint.slice(0, 16) + "…" : "unknown", "status-fingerprint"],
        ["Workers on this key set", String(countOnline(checks.embedder) + countOnline(checks.he_matcher)), "status-key-workers"],
      ]);
      busy(refresh, false);
    }

    refresh.addEventListener("click", load);
    load();
  }

  // -- start ----------------------------------------------------------------------------

  const PAGES = {
    login: initLogin,
    enroll: initEnroll,
    identify: initIdentify,
    verify: initVerify,
    galleries: initGalleries,
    status: initStatus,
  };

  function start() {
    const page = body.dataset.page;
    showFlash();
    if (page !== "login") {
      if (!apiKey()) {
        sessionStorage.setItem(STORE.next, window.location.pathname);
        signOut("Sign in to use the console.");
        return;
      }
      const signout = byTestId("signout");
      show(signout, true);
      signout.addEventListener("click", () => signOut("Signed out: the API key was removed from this tab."));
      bindRemembered();
      fillGalleryNames();
    }
    window.addEventListener("unhandledrejection", (event) => {
      if (event.reason instanceof ApiError && event.reason.status === 401) return;
      flashNow(describe(event.reason), "error");
    });
    (PAGES[page] || (() => undefined))();
  }

  start();
})();
