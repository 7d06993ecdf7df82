// The try-it page: plain DOM calls to /catalog, /recommend, /explain and /ratings.
// An API key, if the server wants one, lives in this tab's sessionStorage only.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const state = {
    user: null,
    genre: "",
    movies: new Map(), // id -> {title, year, genres}
    key: sessionStorage.getItem("fmrec-key") || "",
    retry: null, // what to do again once a key is given
  };

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  function describe(data, status) {
    const detail = data && data.detail;
    if (typeof detail === "string") return `${status}: ${detail}`;
    if (Array.isArray(detail)) {
      return `${status}: ` + detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    }
    return `HTTP ${status}`;
  }

  async function api(method, path, body) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.key) headers["X-API-Key"] = state.key;
    const response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(describe(data, response.status), response.status);
    return data;
  }

  function say(message, isError = false) {
    $("status").textContent = message;
    $("status").classList.toggle("error", isError);
  }

  // Runs `action`; a 401/403 asks for the key and runs it again once one is given.
  async function guarded(action) {
    try {
      await action();
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        state.retry = action;
        $("key-form").hidden = false;
        $("api-key").focus();
        say(`${error.message}. Enter the API key to continue.`, true);
      } else {
        say(error.message, true);
      }
    }
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    node.append(...children);
    return node;
  }

  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function signed(x, digits = 3) {
    return (x >= 0 ? "+" : "−") + Math.abs(x).toFixed(digits);
  }

  // --- catalog and user ------------------------------------------------------------------

  async function loadCatalog() {
    const catalog = await api("GET", "/catalog");
    state.movies = new Map(catalog.movies.map((m) => [m.id, m]));
    $("known-users").replaceChildren(...catalog.users.map((u) => el("option", { value: u })));
    $("genre").replaceChildren(el("option", { value: "" }, "All genres"),
      ...catalog.genres.map((g) => el("option", { value: g }, g)));
    $("genre").value = state.genre;
    if (!state.user) state.user = sessionStorage.getItem("fmrec-user") || catalog.users[0] || "";
    $("user-id").value = state.user;
  }

  function setUser(user) {
    state.user = user;
    sessionStorage.setItem("fmrec-user", user);
    $("user-id").value = user;
    $("explain").hidden = true;
  }

  // --- recommendations -------------------------------------------------------------------

  function becauseLine(because) {
    if (!because || because.length === 0) return "Rate a few movies to see why.";
    const names = because.map((b) => b.title || `movie ${b.movie_id}`);
    return "Because you rated " + names.join(" and ");
  }

  function recommendationItem(item) {
    const movie = state.movies.get(item.movie_id) || {};
    const title = item.title || movie.title || item.movie_id;
    const meta = [movie.year, (movie.genres || []).join(", ")].filter(Boolean).join(" · ");
    const rate = el("div", { class: "rate", role: "group", "aria-label": `Rate ${title}` },
      el("span", {}, "Rate:"));
    for (let stars = 1; stars <= 5; stars += 1) {
      const button = el("button", {
        type: "button", "data-rate": String(stars), "aria-label": `Rate ${title} ${stars} of 5`,
      }, String(stars));
      button.addEventListener("click", () => guarded(() => rateMovie(item.movie_id, title, stars)));
      rate.append(button);
    }
    const name = el("button", {
      type: "button", class: "title", "data-movie": item.movie_id,
      "aria-label": `${title}: why is it recommended?`,
    }, title);
    name.addEventListener("click", () => guarded(() => explainMovie(item.movie_id, title)));
    return el("li", { "data-movie": item.movie_id },
      el("div", { class: "movie" }, name, el("span", { class: "meta" }, meta)),
      el("div", { class: "pred" }, "Predicted rating ",
        el("strong", { "data-rating": String(item.rating) }, item.rating.toFixed(2))),
      el("p", { class: "because" }, becauseLine(item.because)),
      rate);
  }

  async function loadRecommendations() {
    $("recs").setAttribute("aria-busy", "true");
    const body = { user: { id: state.user }, n: 10, explain: true };
    if (state.genre) body.genres = [state.genre];
    const answer = await api("POST", "/recommend", body);
    $("who-name").textContent = `user ${state.user}`;
    $("recs").replaceChildren(...answer.items.map(recommendationItem));
    $("recs").setAttribute("aria-busy", "false");
  }

  async function rateMovie(movieId, title, stars) {
    const now = Math.floor(Date.now() / 1000);
    const random = Math.random().toString(16).slice(2, 10);
    await api("POST", "/ratings", {
      events: [{
        event_id: `web-${state.user}-${movieId}-${now}-${random}`, user_id: state.user,
        movie_id: movieId, rating: stars, timestamp: now,
      }],
    });
    await loadRecommendations();
    say(`Rated ${title}: ${stars} of 5. The list is updated.`);
  }

  // --- explanation -----------------------------------------------------------------------

  function drawChart(bars) {
    const rowHeight = 26;
    const width = 640;
    const labelWidth = 170;
    const left = labelWidth + 10;
    const right = width - 70;
    const biggest = Math.max(...bars.map((b) => Math.abs(b.value)), 1e-9);
    const zero = bars.some((b) => b.value < 0) ? (left + right) / 2 : left;
    const scale = (zero === left ? right - left : (right - left) / 2) / biggest;
    const height = rowHeight * bars.length + 10;
    const chart = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Contributions to the score: " + bars.map(
        (b) => `${b.label} ${signed(b.value)}`).join(", "),
    });
    bars.forEach((bar, n) => {
      const y = 5 + n * rowHeight;
      const length = Math.abs(bar.value) * scale;
      const x = bar.value >= 0 ? zero : zero - length;
      chart.append(svg("text", { x: labelWidth, y: y + 17, "text-anchor": "end" }, bar.label));
      const rect = svg("rect", {
        class: `bar ${bar.value >= 0 ? "up" : "down"}`, x, y: y + 4,
        width: Math.max(length, 0.5), height: rowHeight - 8, "data-field": bar.label,
        "data-value": String(bar.value),
      });
      rect.append(svg("title", {}, `${bar.label}: ${signed(bar.value, 4)}`));
      chart.append(rect);
      const end = bar.value >= 0 ? x + length + 4 : x - 4;
      chart.append(svg("text", { x: end, y: y + 17, "text-anchor": bar.value >= 0 ? "start" : "end" },
        signed(bar.value)));
    });
    chart.append(svg("line", { class: "axis", x1: zero, x2: zero, y1: 0, y2: height }));
    return chart;
  }

  async function explainMovie(movieId, title) {
    const answer = await api("POST", "/explain", {
      user: { id: state.user }, movies: [{ id: movieId }],
    });
    $("explain-title").textContent = title;
    $("explain-score").textContent = answer.score.toFixed(3);
    $("explain-score").dataset.score = String(answer.score);
    $("explain-rating").textContent = answer.rating.toFixed(2);
    const bars = [{ label: "bias", value: answer.bias },
      ...answer.fields.map((f) => ({ label: f.field, value: f.contribution }))];
    $("chart").replaceChildren(drawChart(bars));
    const features = answer.fields.flatMap((f) => f.features)
      .sort((a, b) => Math.abs(b.contribution) - Math.abs(a.contribution)).slice(0, 8);
    $("explain-features").replaceChildren(...features.map((f) => el("li", {},
      `${f.field}: ${f.value} ${signed(f.contribution)}`,
      f.shared_bucket ? el("span", { class: "shared" },
        ` (hash bucket shared by ${f.shared_bucket.features} known features)`) : "")));
    $("explain").hidden = false;
    $("explain").focus();
  }

  // --- wiring ----------------------------------------------------------------------------

  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setUser($("user-id").value.trim());
    guarded(loadRecommendations);
  });
  $("new-user").addEventListener("click", () => {
    const bytes = crypto.getRandomValues(new Uint8Array(4));
    setUser("web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(""));
    say(`You are ${state.user}, a new user: rate movies to shape the list.`);
    guarded(loadRecommendations);
  });
  $("genre").addEventListener("change", () => {
    state.genre = $("genre").value;
    guarded(loadRecommendations);
  });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value;
    sessionStorage.setItem("fmrec-key", state.key);
    $("key-form").hidden = true;
    say("");
    const retry = state.retry;
    state.retry = null;
    if (retry) guarded(retry);
  });

  guarded(async () => {
    await loadCatalog();
    await loadRecommendations();
  });
})();
