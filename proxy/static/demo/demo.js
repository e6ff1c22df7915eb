/* flux-proxy demo page: FLUX.1 [dev] through @fal-ai/client configured with `proxyUrl`.
 *
 * Served by the proxy under /demo/; every URL here is relative to the page.
 * ./config.json → {"proxyUrl", "endpoint", "mode": "demo" | "hosted", "title"}.
 * Plain script, no framework; the bundled client (./fal-client.js) defines window.FalClient.
 */
(() => {
  "use strict";

  const DEFAULTS = Object.freeze({
    proxyUrl: "/api/fal/proxy",
    endpoint: "fal-ai/flux/dev",
    mode: "unknown",
    title: "FLUX.1 [dev]",
  });

  const MODE_BADGES = {
    demo: "demo backend — images are synthetic",
    hosted: "fal.ai hosted backend",
    unknown: "backend unknown (no config.json)",
  };

  // Input field name (last element of a 422 `loc`) → form control id.
  const FIELD_IDS = {
    prompt: "prompt",
    image_size: "image-size",
    width: "width",
    height: "height",
    num_inference_steps: "steps",
    guidance_scale: "guidance",
    seed: "seed",
    num_images: "num-images",
    output_format: "output-format",
  };

  const MAX_RESULT_GROUPS = 8;

  const $ = (id) => document.getElementById(id);
  const el = {
    form: $("generate-form"),
    title: $("title"),
    badge: $("mode-badge"),
    prompt: $("prompt"),
    imageSize: $("image-size"),
    customSize: $("custom-size"),
    width: $("width"),
    height: $("height"),
    steps: $("steps"),
    guidance: $("guidance"),
    seed: $("seed"),
    numImages: $("num-images"),
    outputFormat: $("output-format"),
    generate: $("generate"),
    cancel: $("cancel"),
    status: $("status"),
    requestId: $("request-id"),
    progress: $("progress"),
    error: $("error"),
    logsPanel: $("logs-panel"),
    logs: $("logs"),
    logsCount: $("logs-count"),
    results: $("results"),
    proxyUrl: $("proxy-url"),
    endpoint: $("endpoint"),
  };

  let config = { ...DEFAULTS };
  let fal = null;
  let FalLib = null;
  /** The run in flight, or null. Runs are objects so stale callbacks can tell they are stale. */
  let activeRun = null;
  /** The most recent run, finished or not: its abort signal rides on every client request. */
  let latestRun = null;
  /** Retry-After (seconds) of the most recent 429 the client saw; ApiError does not carry headers. */
  let lastRetryAfter = null;
  /** The `limit` object of that 429's body (which budget, when it resets), or null. */
  let lastRateLimit = null;

  // ---------------------------------------------------------------- config & client

  async function loadConfig() {
    try {
      const response = await fetch("./config.json", { cache: "no-store", headers: { accept: "application/json" } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      const merged = { ...DEFAULTS };
      for (const key of Object.keys(DEFAULTS)) {
        if (typeof data[key] === "string" && data[key].trim() !== "") merged[key] = data[key];
      }
      return merged;
    } catch (err) {
      console.warn("config.json unavailable, using defaults:", err);
      return { ...DEFAULTS };
    }
  }

  /** Past this many seconds of Retry-After, a refused submit is not retried: the client's own
   * retries (about 7 s in all) would only be refused again, and the user waits for nothing. */
  const GIVE_UP_AFTER_SECONDS = 8;

  /** fetch used by the fal client: records the 429 answer and ties every request to the latest
   * run's abort signal, so a cancelled run's requests still in flight can be dropped. */
  function clientFetch(input, init = {}) {
    const run = latestRun;
    let options = init;
    if (run) {
      const own = init.signal; // the client's own (e.g. a status stream's abort)
      const signal = !own ? run.abort.signal : AbortSignal.any ? AbortSignal.any([own, run.abort.signal]) : own;
      options = { ...init, signal };
    }
    return fetch(input, options).then(async (response) => {
      if (response.status !== 429) return response;
      // Buffer the body: it says which limit and when it resets, and a copy outlives an abort.
      const text = await response.text();
      const copy = new Response(text, { status: 429, statusText: response.statusText, headers: response.headers });
      lastRetryAfter = parseRetryAfter(response.headers.get("retry-after"));
      lastRateLimit = parseLimit(text);
      if (run && run === activeRun && !run.finished && !run.cancelRequested) {
        const wait = retryAfterSeconds(null);
        if (!run.requestId && wait != null && wait > GIVE_UP_AFTER_SECONDS) {
          run.giveUp.abort(); // the client stops retrying and throws this 429
        } else {
          setStatus("rate-limited", "Rate limited by the proxy — the client is retrying…");
        }
      }
      return copy;
    });
  }

  /** The proxy's 429 body: `{"detail", "error_type", "limit": {"budget", "policy", "reset", "reset_at"}}`. */
  function parseLimit(text) {
    try {
      const body = JSON.parse(text);
      const limit = body && typeof body.limit === "object" && body.limit !== null ? body.limit : null;
      return limit ? { ...limit, seenAt: Date.now() } : null;
    } catch (_) {
      return null;
    }
  }

  function parseRetryAfter(value) {
    if (!value) return null;
    const seconds = Number(value);
    if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
    const date = Date.parse(value);
    return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
  }

  // ---------------------------------------------------------------- form

  function syncCustomSize() {
    const custom = el.imageSize.value === "custom";
    el.customSize.hidden = !custom;
    el.width.required = custom;
    el.height.required = custom;
  }

  function buildInput() {
    const input = {
      prompt: el.prompt.value.trim(),
      image_size: el.imageSize.value,
      num_inference_steps: Number(el.steps.value),
      guidance_scale: Number(el.guidance.value),
      num_images: Number(el.numImages.value),
      output_format: el.outputFormat.value,
    };
    if (input.image_size === "custom") {
      input.image_size = { width: Number(el.width.value), height: Number(el.height.value) };
    }
    if (el.seed.value.trim() !== "") input.seed = Number(el.seed.value);
    return input;
  }

  function clearInvalid() {
    for (const node of el.form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  }

  function setBusy(busy) {
    el.generate.disabled = busy || !fal;
    el.generate.textContent = busy ? "Generating…" : "Generate";
    el.cancel.disabled = !busy;
    el.form.setAttribute("aria-busy", String(busy));
  }

  // ---------------------------------------------------------------- status, progress, logs

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
  }

  function setProgress(fraction) {
    if (fraction == null) {
      el.progress.removeAttribute("value"); // indeterminate
    } else {
      el.progress.value = Math.round(Math.min(1, Math.max(0, fraction)) * 100);
    }
  }

  /** Step progress from log lines such as "step 3/28" or tqdm's " 11%|█ | 3/28 [...]". */
  function progressFromLogs(logs) {
    for (let i = logs.length - 1; i >= 0; i--) {
      const message = String(logs[i] && logs[i].message != null ? logs[i].message : "");
      const match = /(\d+)\s*\/\s*(\d+)/.exec(message);
      if (match) {
        const current = Number(match[1]);
        const total = Number(match[2]);
        if (total > 0 && current <= total) return { current, total };
      }
    }
    return null;
  }

  function resetLogs() {
    el.logs.textContent = "";
    el.logs.dataset.count = "0";
    el.logsCount.textContent = "0";
  }

  function renderLogs(logs) {
    const rendered = Number(el.logs.dataset.count || 0);
    const start = logs.length >= rendered ? rendered : 0;
    if (start === 0) el.logs.textContent = "";
    const fragment = document.createDocumentFragment();
    for (const entry of logs.slice(start)) {
      const line = document.createElement("span");
      line.className = `log-line log-${String(entry.level || "info").toLowerCase()}`;
      const time = entry.timestamp ? new Date(entry.timestamp) : null;
      const stamp = time && !Number.isNaN(time.getTime()) ? time.toLocaleTimeString([], { hour12: false }) + "  " : "";
      line.textContent = `${stamp}${entry.message ?? ""}\n`;
      fragment.appendChild(line);
    }
    el.logs.appendChild(fragment);
    el.logs.dataset.count = String(logs.length);
    el.logsCount.textContent = String(logs.length);
    if (logs.length > 0 && rendered === 0) el.logsPanel.open = true;
    el.logs.scrollTop = el.logs.scrollHeight;
  }

  function onQueueUpdate(run, update) {
    if (run !== activeRun || run.finished) return;
    if (Array.isArray(update.logs)) renderLogs(update.logs);
    if (run.cancelRequested) return; // keep "Cancelling…" on screen
    switch (update.status) {
      case "IN_QUEUE": {
        const ahead = Number(update.queue_position);
        el.status.dataset.queuePosition = Number.isFinite(ahead) ? String(ahead) : "";
        const where = !Number.isFinite(ahead) ? "" : ahead === 0 ? " — you are next" : ` — ${ahead} ahead of you`;
        setStatus("IN_QUEUE", `In queue${where}`);
        setProgress(null);
        break;
      }
      case "IN_PROGRESS": {
        const step = progressFromLogs(update.logs || []);
        setStatus("IN_PROGRESS", step ? `Generating — step ${step.current}/${step.total}` : "Generating…");
        setProgress(step ? step.current / step.total : null);
        break;
      }
      case "COMPLETED":
        setStatus("COMPLETED", "Finishing — fetching the result…");
        setProgress(1);
        break;
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- errors

  function hideError() {
    el.error.hidden = true;
    el.error.textContent = "";
    delete el.error.dataset.kind;
    delete el.error.dataset.retryAfter;
    delete el.error.dataset.limit;
  }

  function showError(kind, title, detail, items) {
    el.error.dataset.kind = kind;
    el.error.textContent = "";
    const heading = document.createElement("strong");
    heading.className = "error__title";
    heading.textContent = title;
    el.error.appendChild(heading);
    if (detail) {
      const p = document.createElement("p");
      p.className = "error__detail";
      p.textContent = detail;
      el.error.appendChild(p);
    }
    if (items && items.length) {
      const list = document.createElement("ul");
      for (const [field, message] of items) {
        const li = document.createElement("li");
        if (field) {
          const name = document.createElement("code");
          name.textContent = field;
          li.append(name, `: ${message}`);
        } else {
          li.textContent = message;
        }
        list.appendChild(li);
      }
      el.error.appendChild(list);
    }
    el.error.hidden = false;
  }

  function detailText(body) {
    if (!body) return "";
    if (typeof body === "string") return body;
    if (typeof body.detail === "string") return body.detail;
    if (body.detail != null) return JSON.stringify(body.detail);
    if (typeof body.message === "string") return body.message;
    return "";
  }

  /** Seconds until the caller may retry: the body's own `retry_after`, else the proxy's
   * `limit.reset` counted from when the 429 arrived (the client may have retried since), else
   * `limit.reset_at`, else Retry-After, else the "try again in N s" of the detail. */
  function retryAfterSeconds(body) {
    if (body && body.retry_after != null && Number.isFinite(Number(body.retry_after))) {
      return Math.max(0, Math.ceil(Number(body.retry_after)));
    }
    const limit = lastRateLimit || (body && typeof body.limit === "object" && body.limit !== null ? body.limit : null);
    if (limit && Number.isFinite(Number(limit.reset)) && limit.seenAt) {
      return Math.max(1, Math.ceil(Number(limit.reset) - (Date.now() - limit.seenAt) / 1000));
    }
    if (limit && Number.isFinite(Number(limit.reset_at))) {
      return Math.max(1, Math.floor(Number(limit.reset_at) - Date.now() / 1000));
    }
    if (lastRetryAfter != null) return lastRetryAfter;
    const match = /(?:retry|try again) in (\d+)/i.exec(detailText(body));
    return match ? Number(match[1]) : null;
  }

  /** "the submit limit (1 per 1 minute)" from the proxy's `limit`, when it names one. */
  function limitName(body) {
    const limit = body && typeof body.limit === "object" && body.limit !== null ? body.limit : lastRateLimit;
    if (!limit || typeof limit.budget !== "string") return null;
    return typeof limit.policy === "string" ? `${limit.budget} limit (${limit.policy})` : `${limit.budget} limit`;
  }

  function isNetworkError(err) {
    return err instanceof TypeError && /fetch|network|load failed/i.test(String(err.message));
  }

  function reportError(err) {
    const status = err && typeof err.status === "number" ? err.status : null;
    const body = err ? err.body : null;
    if (status === 429) {
      const seconds = retryAfterSeconds(body);
      const when = seconds == null ? "later" : `in ${seconds} s`;
      const at = seconds == null ? "" : ` (at ${new Date(Date.now() + seconds * 1000).toLocaleTimeString([], { hour12: false })})`;
      showError("rate-limit", `Rate limit reached — try again ${when}${at}`, detailText(body));
      if (seconds != null) el.error.dataset.retryAfter = String(seconds);
      const name = limitName(body);
      if (name) el.error.dataset.limit = name.split(" ")[0];
      return "Rate limited";
    }
    if (FalLib && err instanceof FalLib.ValidationError) {
      const items = [];
      for (const fieldError of err.fieldErrors) {
        const loc = Array.isArray(fieldError.loc) ? fieldError.loc : [];
        const field = loc.length ? String(loc[loc.length - 1]) : "";
        const control = FIELD_IDS[field] ? $(FIELD_IDS[field]) : null;
        if (control) control.setAttribute("aria-invalid", "true");
        items.push([field === "body" ? "" : field, fieldError.msg || fieldError.type || "invalid"]);
      }
      showError("validation", "Some inputs were rejected", null, items);
      const first = el.form.querySelector("[aria-invalid='true']");
      if (first && !first.closest("[hidden]")) first.focus();
      return "Invalid input";
    }
    if (FalLib && err instanceof FalLib.ApiError) {
      const detail = detailText(body) || err.message;
      const requestId = err.requestId ? ` (request ${err.requestId})` : "";
      showError("api", `Request failed (HTTP ${status})`, detail + requestId);
      return `Failed (HTTP ${status})`;
    }
    if (isNetworkError(err)) {
      showError("network", "Cannot reach the proxy", `No answer from ${config.proxyUrl}. Check that the server is running and reachable, then try again.`);
      return "Offline";
    }
    showError("api", "Unexpected error", String((err && err.message) || err));
    console.error(err);
    return "Failed";
  }

  // ---------------------------------------------------------------- results

  function safeUrl(url) {
    try {
      const parsed = new URL(url, document.baseURI);
      if (["http:", "https:", "blob:"].includes(parsed.protocol)) return parsed.href;
      if (parsed.protocol === "data:" && /^data:image\//i.test(url)) return url;
    } catch (_) {
      /* fall through */
    }
    return null;
  }

  function formatSeconds(value) {
    const n = Number(value);
    return Number.isFinite(n) ? `${n < 10 ? n.toFixed(2) : n.toFixed(1)} s` : null;
  }

  function renderResult(run, output, requestId) {
    const images = Array.isArray(output && output.images) ? output.images : [];
    const nsfw = Array.isArray(output && output.has_nsfw_concepts) ? output.has_nsfw_concepts : [];
    const inference = formatSeconds(output && output.timings && output.timings.inference);
    const seed = output && output.seed != null ? String(output.seed) : null;

    const group = document.createElement("section");
    group.className = "result-group";
    if (requestId) group.dataset.requestId = requestId;

    const header = document.createElement("header");
    header.className = "result-group__header";
    const prompt = document.createElement("p");
    prompt.className = "result-group__prompt";
    prompt.textContent = run.input.prompt;
    const meta = document.createElement("p");
    meta.className = "result-group__meta";
    const total = formatSeconds((performance.now() - run.startedAt) / 1000);
    meta.textContent = [
      `${images.length} image${images.length === 1 ? "" : "s"}`,
      seed != null ? `seed ${seed}` : null,
      inference ? `inference ${inference}` : null,
      total ? `total ${total}` : null,
    ].filter(Boolean).join(" · ");
    header.append(prompt, meta);
    group.appendChild(header);

    const grid = document.createElement("div");
    grid.className = "result-grid";
    images.forEach((image, index) => {
      const figure = document.createElement("figure");
      figure.className = "result";
      const href = safeUrl(image && image.url);
      const img = document.createElement("img");
      img.className = "result-image";
      img.alt = `${run.input.prompt} (image ${index + 1} of ${images.length})`;
      img.decoding = "async";
      if (Number(image.width) > 0 && Number(image.height) > 0) {
        img.width = Number(image.width);
        img.height = Number(image.height);
      }
      if (href) img.src = href;
      const link = document.createElement(href ? "a" : "span");
      if (href) {
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener";
        link.title = "Open full size";
      }
      link.appendChild(img);

      const caption = document.createElement("figcaption");
      const size = img.width && img.height ? `${img.width}×${img.height}` : "";
      caption.textContent = [
        seed != null ? `seed ${seed}` : null,
        size || null,
        inference ? `inference ${inference}` : null,
        nsfw[index] === true ? "flagged NSFW" : null,
      ].filter(Boolean).join(" · ");
      if (!size) {
        img.addEventListener("load", () => {
          caption.textContent = `${img.naturalWidth}×${img.naturalHeight}` + (caption.textContent ? ` · ${caption.textContent}` : "");
        }, { once: true });
      }
      figure.append(link, caption);
      grid.appendChild(figure);
    });
    group.appendChild(grid);

    const empty = el.results.querySelector(".results__empty");
    if (empty) empty.remove();
    el.results.prepend(group);
    while (el.results.querySelectorAll(".result-group").length > MAX_RESULT_GROUPS) {
      el.results.lastElementChild.remove();
    }
    return images.length;
  }

  // ---------------------------------------------------------------- run / cancel

  function finish(run) {
    run.finished = true;
    if (activeRun === run) {
      activeRun = null;
      setBusy(false);
    }
  }

  async function generate(input) {
    if (activeRun || !fal) return;
    const run = {
      input,
      requestId: null,
      cancelRequested: false,
      /** Promise<boolean> of the cancel request (true: the server accepted it), once sent. */
      cancelling: null,
      finished: false,
      abort: new AbortController(),
      /** Aborted to stop the client retrying a submit the proxy will refuse for a long while. */
      giveUp: new AbortController(),
      startedAt: performance.now(),
    };
    activeRun = run;
    latestRun = run;
    lastRetryAfter = null;
    lastRateLimit = null;
    hideError();
    clearInvalid();
    resetLogs();
    el.requestId.hidden = true;
    el.requestId.textContent = "";
    setBusy(true);
    setStatus("submitting", "Submitting…");
    setProgress(null);
    // On a phone the status panel sits below the form: bring it into view.
    el.status.closest(".status-panel").scrollIntoView({ block: "nearest", behavior: "smooth" });

    // Once a cancel is sent, cancel() owns the outcome; its success shows "Cancelled".
    const wasCancelled = async () => run.cancelling !== null && (await run.cancelling);
    try {
      const result = await fal.subscribe(config.endpoint, {
        input,
        mode: "streaming",
        logs: true,
        abortSignal: run.giveUp.signal,
        onEnqueue(requestId) {
          run.requestId = requestId;
          el.requestId.textContent = requestId;
          el.requestId.title = "fal request id";
          el.requestId.hidden = false;
          if (run.cancelRequested) cancel();
          else setStatus("IN_QUEUE", "In queue…");
        },
        onQueueUpdate(update) {
          onQueueUpdate(run, update);
        },
      });
      if (await wasCancelled()) return;
      hideError(); // e.g. a failed cancel attempt
      const count = renderResult(run, result.data, result.requestId || run.requestId);
      setProgress(1);
      const total = formatSeconds((performance.now() - run.startedAt) / 1000);
      setStatus("done", `Done in ${total} — ${count} image${count === 1 ? "" : "s"}`);
    } catch (err) {
      // After a successful cancel the status stream / result fetch fail or return junk: expected.
      if (await wasCancelled()) return;
      setProgress(0);
      setStatus("error", reportError(err));
    } finally {
      finish(run);
    }
  }

  /** Cancel the active run: once the server accepts, the run ends as "Cancelled" at once, whatever
   * its subscribe() still does (generate() defers to run.cancelling). */
  function cancel() {
    const run = activeRun;
    if (!run || run.finished || run.cancelling) return;
    run.cancelRequested = true;
    el.cancel.disabled = true;
    if (!run.requestId) {
      setStatus("cancelling", "Cancelling once the request is queued…");
      return; // onEnqueue calls cancel() again
    }
    setStatus("cancelling", "Cancelling…");
    run.cancelling = fal.queue.cancel(config.endpoint, { requestId: run.requestId }).then(
      () => {
        finish(run);
        setProgress(0);
        setStatus("cancelled", "Cancelled");
        showError("cancelled", "Cancelled", `Request ${run.requestId} was cancelled.`);
        // Drop the request's status stream / result fetch if still open, freeing the connection.
        // (The client's subscribe() may then never settle; nothing waits on it any more.)
        run.abort.abort();
        return true;
      },
      (err) => {
        if (run.finished) return false;
        if (err && err.status === 400) {
          // ALREADY_COMPLETED: the result is on its way; let the run finish normally.
          setStatus("cancelling", "Too late to cancel — the request already completed");
        } else {
          setStatus("cancel-failed", "Cancel failed — still running");
          reportError(err);
          run.cancelRequested = false; // let the user try again
          run.cancelling = null;
          el.cancel.disabled = false;
        }
        return false;
      },
    );
  }

  // ---------------------------------------------------------------- init

  function applyConfig() {
    document.title = `${config.title} — flux-proxy demo`;
    el.title.textContent = config.title;
    el.badge.dataset.mode = config.mode;
    el.badge.textContent = MODE_BADGES[config.mode] || `${config.mode} backend`;
    el.proxyUrl.textContent = config.proxyUrl;
    el.endpoint.textContent = config.endpoint;
  }

  async function init() {
    syncCustomSize();
    el.imageSize.addEventListener("change", syncCustomSize);
    el.form.addEventListener("input", (event) => event.target.removeAttribute("aria-invalid"));
    el.form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!el.form.reportValidity()) return;
      generate(buildInput());
    });
    el.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        el.form.requestSubmit();
      }
    });
    el.cancel.addEventListener("click", cancel);

    config = await loadConfig();
    applyConfig();

    FalLib = window.FalClient || null;
    if (!FalLib || !FalLib.fal) {
      setStatus("error", "Client not loaded");
      showError("network", "Cannot load the fal client", "./fal-client.js did not load; rebuild it with web/build.sh.");
      return;
    }
    fal = FalLib.fal;
    fal.config({ proxyUrl: config.proxyUrl, fetch: clientFetch });

    setBusy(false);
    setStatus("idle", "Ready");
    document.body.dataset.ready = "true";
  }

  // A small handle for debugging and browser tests.
  window.fluxDemo = {
    get config() { return { ...config }; },
    get fal() { return fal; },
    buildInput,
    generate,
    cancel,
  };

  init();
})();
