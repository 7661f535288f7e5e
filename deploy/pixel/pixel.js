/*! Attribution pixel: sends impressions, clicks and leads to the collector's /px.
 *
 *   <script src="/pixel.js" data-collector="https://collect.example.com" async></script>
 *
 * or set window.attributionConfig = {collector: "...", ...} before it loads. Options:
 *   collector     base URL of `attribution collect` (required), served on the same site as the page
 *   autoClick     true (default): a landing with utm_source / a click ID is sent as a click
 *   affParam      query parameter naming the affiliate (default "aff")
 *   tid           your own visitor ID; default: the collector's first-party `_tid` cookie
 *   consent       "required" (or data-consent="required"): until the page calls attribution.consent(true),
 *                 no cookie is set and events are sent with consent=false (counted, stored nowhere)
 * API (calls made before the script loaded are queued in window.attribution = [...] ):
 *   attribution.impression({channel, campaign})
 *   attribution.click({channel, campaign, affiliate})
 *   attribution.lead({customerId})
 *   attribution.consent(true | false)   false also drops the `_tid` cookie
 * Elements with data-attribution-impression="channel" (and data-campaign) send one
 * impression the first time half of them is on screen.
 */
(function (window, document) {
  "use strict";
  var script = document.currentScript || {};
  var data = script.dataset || {};
  var config = window.attributionConfig || {};
  var collector = String(config.collector || data.collector || "").replace(/\/+$/, "");
  if (!collector) { return; }
  var affParam = config.affParam || data.affParam || "aff";
  var consented = (config.consent || data.consent) !== "required";
  var query = new URLSearchParams(window.location.search);
  // click IDs of the ad platforms, for landings that carry no utm_source
  var CLICK_IDS = { gclid: "google_ads", gbraid: "google_ads", wbraid: "google_ads", fbclid: "facebook",
    ttclid: "tiktok", msclkid: "microsoft_ads", li_fat_id: "linkedin" };

  // The first request of a page goes out alone and the rest wait for it: a first-time visitor
  // then gets one `_tid` cookie, not one per concurrent request.
  var ready = false, waiting = [];

  function eventId() {
    if (window.crypto && window.crypto.randomUUID) { return window.crypto.randomUUID(); }
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2) + Math.random().toString(36).slice(2);
  }

  function send(params) {
    params.eid = eventId(); // a re-sent beacon is then a duplicate, counted once
    var tid = config.tid || data.tid;
    if (!consented) {
      params.consent = "0"; // the collector then reads and sets no cookie
    } else if (tid) {
      params.tid = tid;
    }
    var body = new URLSearchParams();
    Object.keys(params).forEach(function (k) {
      if (params[k] !== undefined && params[k] !== null && params[k] !== "") { body.append(k, params[k]); }
    });
    if (!ready) { waiting.push(body); if (waiting.length === 1) { first(); } return; }
    beacon(body);
  }

  function first() {
    var img = new Image(1, 1);
    var done = function () {
      ready = true;
      var rest = waiting.slice(1);
      waiting = [];
      rest.forEach(beacon);
    };
    img.onload = img.onerror = done;
    img.src = collector + "/px?" + waiting[0].toString();
  }

  function beacon(body) {
    if (navigator.sendBeacon && navigator.sendBeacon(collector + "/px", body)) { return; }
    new Image(1, 1).src = collector + "/px?" + body.toString();
  }

  var api = {
    impression: function (o) {
      o = o || {};
      send({ e: "impression", ch: o.channel, cmp: o.campaign });
    },
    click: function (o) {
      o = o || {};
      send({ e: "click", ch: o.channel, cmp: o.campaign, aff: o.affiliate });
    },
    lead: function (o) {
      o = o || {};
      send({ e: "lead", cid: o.customerId });
    },
    consent: function (given) {
      consented = given === true;
      if (!consented) { new Image(1, 1).src = collector + "/consent?given=0"; }
    }
  };

  // a landing from a tracked link is a click
  if (config.autoClick !== false && data.autoClick !== "false") {
    var channel = query.get("utm_source");
    if (!channel) {
      Object.keys(CLICK_IDS).forEach(function (id) { if (!channel && query.get(id)) { channel = CLICK_IDS[id]; } });
    }
    if (channel) {
      api.click({ channel: channel.toLowerCase(), campaign: query.get("utm_campaign"), affiliate: query.get(affParam) });
    }
  }

  // on-page placements: data-attribution-impression="channel" data-campaign="..."
  if (window.IntersectionObserver) {
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (!entry.isIntersecting) { return; }
        seen.unobserve(entry.target);
        api.impression({ channel: entry.target.getAttribute("data-attribution-impression"),
          campaign: entry.target.getAttribute("data-campaign") });
      });
    }, { threshold: 0.5 });
    var observe = function () {
      var nodes = document.querySelectorAll("[data-attribution-impression]");
      for (var i = 0; i < nodes.length; i++) { seen.observe(nodes[i]); }
    };
    if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", observe); } else { observe(); }
  }

  // calls queued before the script loaded: window.attribution = [["lead", {...}], ...]
  var queued = Array.isArray(window.attribution) ? window.attribution : [];
  window.attribution = api;
  queued.forEach(function (call) { if (api[call[0]]) { api[call[0]](call[1]); } });
})(window, document);
