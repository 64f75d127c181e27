/* The status page updates itself: poll GET /status/data (the session's user) and rewrite the notification
 * table, the verification list and the live region in place. No framework, no inline code
 * (the Content-Security-Policy forbids it). Without JavaScript the page's <noscript> refresh
 * does the same job, more crudely. */
(function () {
  "use strict";

  var page = document.getElementById("status-page");
  if (!page || !window.fetch) {
    return;
  }
  var url = page.getAttribute("data-user-url");
  var live = document.getElementById("live-status");
  var SETTLED = ["sent", "failed", "skipped", "held"];
  var LABELS = { email: "Email", sms: "SMS" };
  var FAST_MS = 1000; // while messages are on their way
  var SLOW_MS = 5000; // afterwards, to notice a confirmation made in another tab
  var MAX_BACKOFF_MS = 30000;
  var GIVE_UP_MS = 15 * 60 * 1000;
  var started = Date.now();
  var failures = 0;

  function isSettled(notifications) {
    return notifications.every(function (n) {
      return SETTLED.indexOf(n.status) !== -1;
    });
  }

  function setText(element, text) {
    if (element && element.textContent !== text) {
      element.textContent = text;
    }
  }

  function showVerified(which, verified) {
    var item = document.getElementById(which + "-verification");
    if (!item) {
      return false;
    }
    var was = item.getAttribute("data-verified") === "true";
    item.setAttribute("data-verified", verified ? "true" : "false");
    setText(item, verified ? "confirmed" : "not confirmed yet");
    var hide = {
      phone: ["verify-phone-form", "resend-sms-form"],
      email: ["email-instructions", "resend-email-form"],
    };
    if (verified) {
      hide[which].forEach(function (id) {
        var element = document.getElementById(id);
        if (element) {
          element.hidden = true;
        }
      });
    }
    return verified && !was;
  }

  function render(user) {
    var news = [];
    user.notifications.forEach(function (n) {
      var row = document.getElementById("notification-" + n.channel);
      if (!row) {
        return;
      }
      var badge = row.querySelector("[data-status]");
      if (badge.getAttribute("data-status") !== n.status) {
        badge.setAttribute("data-status", n.status);
        badge.className = "status status-" + n.status;
        badge.textContent = n.status;
        news.push((LABELS[n.channel] || n.channel) + " " + n.status);
      }
      setText(row.querySelector('[data-field="attempts"]'), String(n.attempts));
      setText(row.querySelector('[data-field="last_error"]'), n.last_error || "");
    });
    if (showVerified("email", user.email_verified)) {
      news.push("Email address confirmed");
    }
    if (showVerified("phone", user.phone_verified)) {
      news.push("Phone number confirmed");
    }
    var settled = isSettled(user.notifications);
    page.setAttribute("data-settled", settled ? "true" : "false");
    if (news.length) {
      setText(live, news.join(". ") + "." + (settled ? " Both messages have been handled." : ""));
    }
    return settled;
  }

  function schedule(ms) {
    if (Date.now() - started < GIVE_UP_MS) {
      window.setTimeout(poll, ms);
    }
  }

  function poll() {
    if (document.hidden) {
      // Nobody is looking: check again later instead of spending requests.
      schedule(SLOW_MS);
      return;
    }
    window
      .fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (body) {
        failures = 0;
        var user = body.user;
        var settled = render(user);
        if (!(settled && user.email_verified && user.phone_verified)) {
          schedule(settled ? SLOW_MS : FAST_MS);
        }
      })
      .catch(function () {
        failures += 1;
        schedule(Math.min(MAX_BACKOFF_MS, FAST_MS * Math.pow(2, failures)));
      });
  }

  schedule(page.getAttribute("data-settled") === "true" ? SLOW_MS : FAST_MS);
})();
