/* The live page of one SOS: a snapshot and live updates by Server-Sent Events from
   <this page's address>/events, "I'm on it" by POST to <address>/ack. No URL this page
   requests holds a location (the map tiles aside, when a tile server is configured). */
"use strict";
(function () {
  var base = location.pathname.replace(/\/+$/, "");
  var body = document.body;
  var tiles = body.getAttribute("data-tiles") || "";
  var attribution = body.getAttribute("data-attribution") || "";
  var $ = function (id) { return document.getElementById(id); };

  var state = { points: {}, data: null, skew: 0, acked: false, asked: false };
  var map = null, line = null, dots = null, circle = null, fitted = false;

  function setupMap() {
    if (typeof L === "undefined") return;
    map = L.map("map", { zoomControl: true, attributionControl: !!tiles });
    if (tiles) {
      L.tileLayer(tiles, { maxZoom: 19, attribution: attribution }).addTo(map);
    }
    map.setView([0, 0], 2);
    line = L.polyline([], { color: "#b00020", weight: 4 }).addTo(map);
    dots = L.layerGroup().addTo(map);
  }

  function now() { return Date.now() / 1000 + state.skew; }

  function ago(t) {
    var s = Math.max(0, Math.round(now() - t));
    if (s < 60) return s + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
    return (s / 86400).toFixed(1) + " days ago";
  }

  function clock(t) {
    var d = new Date(t * 1000);
    return d.toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });
  }

  function sorted() {
    return Object.keys(state.points).map(function (k) { return state.points[k]; })
      .sort(function (a, b) { return a[1] - b[1] || a[0] - b[0]; });
  }

  function latest() {
    var pts = sorted();
    if (pts.length) {
      var p = pts[pts.length - 1];
      return { t: p[1], lat: p[2], lon: p[3], acc: p[4] };
    }
    var d = state.data, f = d && d.start_fix;
    if (f && typeof f.lat === "number") {
      var age = typeof d.start_fix_age === "number" ? d.start_fix_age : 0;
      return { t: (d.started || now()) - age, lat: f.lat, lon: f.lon, acc: f.acc };
    }
    return null;
  }

  function text(id, value) { $(id).textContent = value; }

  function render() {
    var d = state.data;
    if (!d) return;
    var who = d.owner || d.device;
    $("drill").hidden = !d.drill;
    document.title = (d.drill ? "DRILL: " : "SOS: ") + who;
    text("title", (d.drill ? "Drill: " : "SOS: ") + who + (d.drill ? " is testing their SOS" : " needs help"));
    var st = $("state");
    if (d.ended) {
      st.className = "state ended";
      st.textContent = "SOS ended at " + clock(d.ended) +
        (d.expires ? "; this route is deleted at " + clock(d.expires) : "") + ".";
    } else {
      st.className = "state active";
      st.textContent = "SOS active" + (d.started ? " since " + clock(d.started) : "") +
        ". The route updates by itself.";
    }
    var p = latest();
    if (p) {
      text("age", ago(p.t));
      text("acc", typeof p.acc === "number" ? "±" + Math.round(p.acc) + " m" : "unknown");
      var c = p.lat.toFixed(6) + ", " + p.lon.toFixed(6);
      text("coords", c);
      $("geo").href = "geo:" + c.replace(" ", "") + "?q=" + c.replace(" ", "");
    }
    var b = d.battery;
    text("battery", b && typeof b.pct === "number" ? Math.round(b.pct) + "%" +
      (b.status ? " (" + b.status + ")" : "") : "not shared");
    var n = Object.keys(state.points).length;
    text("npoints", n === 1 ? "1 point" : n + " points");
    $("map").setAttribute("data-points", String(n));
    $("buffered").hidden = !(d.waiting > 0);
    var ev = $("events");
    ev.textContent = "";
    (d.events || []).forEach(function (e) {
      var li = document.createElement("li");
      var what = {
        "sos-start": (d.drill ? "Drill" : "SOS") + " started" + (e.trigger ? " (" + e.trigger + ")" : ""),
        "sos-end": "Ended" + (e.reason ? " (" + e.reason + ")" : ""),
        "sos-ack": "Acknowledged by " + (e.by || "a contact"),
        "last-gasp": "Battery nearly empty: last message",
        "gap": "Some points were not kept on the device (" + (e.reason || "") + ")"
      }[e.kind] || e.kind;
      li.textContent = clock(e.t) + " — " + what;
      ev.appendChild(li);
    });
    renderVoices(d.voices || []);
    renderBefore(d.before || []);
    renderShared(d.shared);
    var mine = (d.confirmed || []).filter(function (a) { return a.name === d.you; });
    var as = $("ackstate");
    if (mine.length) {
      as.className = "ackstate ok";
      as.textContent = "The device confirmed: its owner sees that you are on it.";
      $("ack").disabled = true;
    } else if (state.asked) {
      as.className = "ackstate";
      as.textContent = "Sent; waiting for the device to confirm…";
    }
    drawMap(p);
  }

  function renderVoices(notes) {
    // each note's player is made once: a live update must not stop one playing
    $("voices").hidden = !notes.length;
    notes.forEach(function (v) {
      if (document.getElementById("v-" + v.clip)) return;
      var li = document.createElement("li");
      var label = document.createElement("span");
      label.className = "voicelabel";
      label.textContent = clock(v.at) + " — " + Math.round(v.seconds) + " s" +
        (v.asked ? " (asked for by " + v.asked + ")" : "");
      var audio = document.createElement("audio");
      audio.id = "v-" + v.clip;
      audio.controls = true;
      audio.preload = "metadata";
      audio.src = base + "/voice/" + encodeURIComponent(v.clip);
      li.appendChild(label);
      li.appendChild(audio);
      $("voicelist").appendChild(li);
    });
  }

  var BEFORE = {
    "button-press": "SOS button pressed",
    "countdown": "SOS countdown started",
    "countdown-cancelled": "Countdown cancelled",
    "gps-first-fix": "GPS found its position",
    "gps-lost": "GPS position lost",
    "gps-back": "GPS position back",
    "link-down": "Lost its connection",
    "link-up": "Connected",
    "battery-ok": "Battery fine again",
    "battery-low": "Battery low",
    "battery-critical": "Battery critical"
  };

  function renderBefore(list) {
    $("beforesec").hidden = !list.length;
    var ol = $("before");
    ol.textContent = "";
    list.forEach(function (e) {
      var li = document.createElement("li");
      li.textContent = clock(e.t) + " — " + (BEFORE[e.what] || e.what) +
        (typeof e.pct === "number" ? " (" + Math.round(e.pct) + "%)" : "");
      ol.appendChild(li);
    });
  }

  function renderShared(sh) {
    var p = $("withheld");
    if (!sh) { p.hidden = true; return; }
    var not = [];
    if (sh.battery === false) not.push("the battery");
    if (sh.events === false) not.push("recent events");
    if (sh.voice === false) not.push("voice notes");
    var parts = [];
    if (sh.precision && sh.precision !== "exact") {
      parts.push("The owner shares the position to about " + sh.precision + ".");
    }
    if (not.length) parts.push("The owner chose not to share " + not.join(", ") + ".");
    p.textContent = parts.join(" ");
    p.hidden = !parts.length;
  }

  function drawMap(p) {
    if (!map) return;
    var pts = sorted().map(function (q) { return [q[2], q[3]]; });
    line.setLatLngs(pts);
    dots.clearLayers();
    sorted().forEach(function (q) {
      L.circleMarker([q[2], q[3]], { radius: 3, color: "#b00020", weight: 1, fillOpacity: 0.8 })
        .bindTooltip(clock(q[1])).addTo(dots);
    });
    if (p) {
      if (circle) map.removeLayer(circle);
      circle = L.circle([p.lat, p.lon], { radius: p.acc || 10, color: "#1f4e99", weight: 2, fillOpacity: 0.15 })
        .addTo(map);
      L.circleMarker([p.lat, p.lon], { radius: 7, color: "#fff", weight: 3, fillColor: "#b00020", fillOpacity: 1 })
        .bindTooltip("Latest: " + clock(p.t)).addTo(dots);
      if (!fitted) {
        var all = pts.length ? pts : [[p.lat, p.lon]];
        map.fitBounds(L.latLngBounds(all).pad(0.3), { maxZoom: 16 });
        fitted = true;
      } else if (!map.getBounds().contains([p.lat, p.lon])) {
        map.panTo([p.lat, p.lon]);
      }
    }
  }

  function take(d, full) {
    if (typeof d.now === "number") state.skew = d.now - Date.now() / 1000;
    if (full) state.points = {};
    (d.points || []).forEach(function (q) { state.points[q[0]] = q; });
    var keep = state.data || {};
    state.data = Object.assign({}, keep, d);
    if (!("you" in d) && keep.you) state.data.you = keep.you;
    render();
  }

  function gone() {
    location.reload();  // the server answers with the "expired" page
  }

  function connect() {
    var es = new EventSource(base + "/events");
    es.addEventListener("page", function (m) { take(JSON.parse(m.data), true); live(true); });
    es.addEventListener("update", function (m) { take(JSON.parse(m.data), false); });
    es.addEventListener("gone", function () { es.close(); gone(); });
    es.onerror = function () {
      live(false);
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(function () {
          fetch(base + "/data", { cache: "no-store" }).then(function (r) {
            if (r.status === 410 || r.status === 404) gone(); else connect();
          }, function () { connect(); });
        }, 3000);
      }
    };
  }

  function live(ok) {
    text("live", ok ? "Live: this page updates by itself." : "Reconnecting for live updates…");
  }

  $("ack").addEventListener("click", function () {
    var btn = $("ack");
    btn.disabled = true;
    state.asked = true;
    text("ackstate", "Sending…");
    fetch(base + "/ack", { method: "POST", cache: "no-store" }).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok || !j.ok) throw new Error(j.error || ("HTTP " + r.status));
        render();
      });
    }).catch(function (e) {
      state.asked = false;
      btn.disabled = false;
      $("ackstate").className = "ackstate err";
      text("ackstate", "Not sent (" + e.message + "). Try again.");
    });
  });

  setInterval(render, 15000);  // "2 min ago" keeps moving
  setupMap();
  connect();
})();
