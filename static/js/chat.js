// BYOK chat: live replies over Server-Sent Events, the composer's keys, stop and regenerate.
// Every piece of HTML inserted here was rendered and sanitised on the server (nh3); text the
// page builds itself goes in as text, never as HTML.
(function () {
  "use strict";
  // With JS the drawer opens and closes by a class; :target is the no-JS way (app.css).
  document.documentElement.classList.add("js");

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function composer() { return document.getElementById("composer"); }

  function anyPending() {
    return document.querySelector("article.message[data-stream-url]") !== null;
  }

  // One can type (and press Send) while a reply is written: the message waits and goes
  // once the reply ends (the server takes one turn at a time per conversation).
  var queued = false;

  function setQueued(value) {
    queued = value;
    var note = document.getElementById("composer-queued");
    if (note) note.hidden = !value;
    var form = composer();
    if (form) form.classList.toggle("queued", value);
  }

  function updateComposer() {
    var form = composer();
    if (!form) return;
    var busy = anyPending();
    form.classList.toggle("busy", busy);
    if (!busy && queued) {
      setQueued(false);
      form.requestSubmit();
    }
  }

  // The conversation drawer (narrow screens): opened and closed in place, so the page
  // keeps its scroll position (without JS the links use #conversations and :target).
  function drawer() { return document.getElementById("conversations"); }

  function setDrawer(open) {
    var element = drawer();
    if (!element) return;
    if (!open && location.hash === "#conversations") {
      history.replaceState(null, "", location.pathname + location.search);  // a reload keeps it shut
    }
    element.classList.toggle("open", open);
    document.querySelectorAll(".drawer-open").forEach(function (b) { b.setAttribute("aria-expanded", open ? "true" : "false"); });
    if (open) {
      var search = element.querySelector("input[type=search]");
      if (search) search.focus();
    }
  }

  // Copy a whole reply as its Markdown source (fetched: the page holds only its HTML). The
  // clipboard item takes the fetch's promise, so the click still counts as the gesture.
  function copyReply(button) {
    var text = fetch(button.dataset.markdownUrl, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    });
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    var failed = function () { button.textContent = "Copy failed"; };
    if (window.ClipboardItem && navigator.clipboard.write) {
      var item = new ClipboardItem({ "text/plain": text.then(function (t) { return new Blob([t], { type: "text/plain" }); }) });
      navigator.clipboard.write([item]).then(done, failed);
    } else {
      text.then(function (t) { return navigator.clipboard.writeText(t); }).then(done, failed);
    }
  }

  document.addEventListener("click", function (event) {
    var copy = event.target.closest("[data-action=copy-reply]");
    if (copy) {
      copyReply(copy);
      return;
    }
    if (event.target.closest(".drawer-open")) {
      event.preventDefault();
      setDrawer(true);
    } else if (event.target.closest(".drawer-close, .drawer-backdrop")) {
      event.preventDefault();
      setDrawer(false);
    }
  });

  // Esc closes the drawer, else stops the reply being written (not while editing a
  // message: there it cancels the edit).
  function stopOnEscape(event) {
    if (event.key !== "Escape" || event.defaultPrevented) return;
    var open = drawer();
    if (open && open.classList.contains("open")) {
      setDrawer(false);
      return;
    }
    if (event.target.closest && event.target.closest("details.edit-message")) return;
    var stop = document.querySelector("article.message[data-stream-url] [data-action=stop]:not([disabled])");
    if (stop) {
      event.preventDefault();
      stop.click();
    }
  }

  function regenerateForm(article, label) {
    var form = document.createElement("form");
    form.method = "post";
    form.action = article.dataset.regenerateUrl;
    form.className = "inline";
    var token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrfmiddlewaretoken";
    token.value = csrfToken();
    var button = document.createElement("button");
    button.className = "button small secondary";
    button.textContent = label;
    form.appendChild(token);
    form.appendChild(button);
    return form;
  }

  function finish(article, source, state, label, continuable) {
    source.close();
    delete article.dataset.streamUrl;
    article.classList.remove("status-queued", "status-running");
    article.classList.add("status-" + state);
    var stateEl = article.querySelector("[data-role=state]");
    if (stateEl) stateEl.textContent = { done: "", stopped: "Stopped", error: "Failed" }[state] || "";
    var actions = article.querySelector("[data-role=actions]");
    if (actions) {
      actions.textContent = "";
      actions.appendChild(regenerateForm(article, label));
      if (continuable) actions.appendChild(continueForm(article));
    }
    updateComposer();
  }

  // The key that served a finished reply and its tokens: plain text from the final event.
  function showFacts(article, data) {
    ["via", "usage"].forEach(function (name) {
      var el = article.querySelector("[data-role=" + name + "]");
      if (el && typeof data[name] === "string") el.textContent = data[name];
    });
  }

  function follow(article) {
    if (article.dataset.following) return;
    article.dataset.following = "1";
    var body = article.querySelector("[data-role=body]");
    var stateEl = article.querySelector("[data-role=state]");
    // The reply as Markdown while it streams: blocks that are complete are appended once
    // (`commit`); the last, growing block (`tail`) is replaced as it grows. Both are HTML
    // rendered and sanitised by the server (chat.rendering.LiveMarkdown, nh3), the same
    // as the final HTML, so the swap at `done` moves nothing.
    var tail = document.createElement("div");
    tail.className = "md-tail";
    // A continuation keeps the reply it continues on show until its first rendering,
    // which is of the whole reply (`reset`).
    if (!article.dataset.keepBody) body.textContent = "";
    body.appendChild(tail);
    var source = new EventSource(article.dataset.streamUrl);

    source.addEventListener("delta", function (event) {
      var data = JSON.parse(event.data);
      if (typeof data.tail === "string") {
        if (data.reset) {
          while (body.firstChild !== tail) body.removeChild(body.firstChild);
        }
        if (data.commit) tail.insertAdjacentHTML("beforebegin", data.commit);
        tail.innerHTML = data.tail;
        decorateCode(body);
      }
      if (stateEl) stateEl.textContent = "Writing…";
      article.classList.add("status-running");
      keepScrolled();
    });
    source.addEventListener("done", function (event) {
      var data = JSON.parse(event.data);
      body.innerHTML = data.html;  // rendered and sanitised by the server (nh3)
      showFacts(article, data);
      var notice = article.querySelector("[data-role=notice]");
      if (notice) notice.textContent = data.notice || "";
      finish(article, source, data.status || "done", "Regenerate", data.continuable === "1");
      decorateCode(article);
    });
    source.addEventListener("error", function (event) {
      if (!event.data) return;  // a dropped connection: EventSource reconnects by itself
      var data = JSON.parse(event.data);
      if (data.html) body.innerHTML = data.html;
      showFacts(article, data);
      var error = article.querySelector("[data-role=error]");
      if (error) {
        error.textContent = data.message;
        var links = {keys: ["/keys/", " Open your keys."], usage: ["/usage/caps/", " Open your spend caps."]};
        var code = data.link || data.action;  // the page it links to (chat.turns.error_link)
        if (links[code]) {
          var link = document.createElement("a");
          link.href = links[code][0];
          link.textContent = links[code][1];
          error.appendChild(link);
        }
        error.hidden = false;
      }
      finish(article, source, "error", "Retry");
    });

    var stop = article.querySelector("[data-action=stop]");
    if (stop) {
      stop.addEventListener("click", function () {
        stop.disabled = true;
        stop.textContent = "Stopping…";
        fetch(article.dataset.cancelUrl, {
          method: "POST",
          headers: { "X-CSRFToken": csrfToken(), "HX-Request": "true" },
          credentials: "same-origin",
        });
      });
    }
  }

  // The page follows the newest message while the reader stays at the bottom: on opening a
  // conversation, after sending, and as a reply grows. Scrolling up to read stops it until
  // the reader comes back down (or sends again). Whether the reader went up is read from the
  // position itself, not only from scroll events, which can arrive after the next delta.
  var following = true;
  var autoY = null;  // where the page last scrolled itself to

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
  }

  function readerMoved() {
    if (autoY !== null && window.scrollY < autoY - 40) following = false;
    else if (nearBottom()) following = true;
  }

  function keepScrolled(force) {
    if (!document.getElementById("messages")) return;
    if (force) following = true;
    else readerMoved();
    if (following) {
      window.scrollTo(0, document.body.scrollHeight);
      autoY = window.scrollY;
    }
  }

  window.addEventListener("scroll", readerMoved, { passive: true });

  // A copy button on every code block: in the header the server renders above a fenced
  // block (with its language), or in the corner of an indented one.
  function decorateCode(root) {
    root.querySelectorAll("pre").forEach(function (pre) {
      var block = pre.closest(".code-block");
      var holder = block ? block.querySelector(".code-head") : pre;
      if (!holder || holder.querySelector(".copy")) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy the code");
      button.addEventListener("click", function () {
        var code = pre.querySelector("code") || pre;
        navigator.clipboard.writeText(code.innerText).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        });
      });
      holder.appendChild(button);
    });
  }

  function attach(root) {
    root.querySelectorAll("article.message[data-stream-url]").forEach(follow);
    decorateCode(root);
    updateComposer();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.body.addEventListener("htmx:afterSettle", suggestModel);
    document.addEventListener("keydown", stopOnEscape);
    if (location.hash === "#conversations" && window.matchMedia("(max-width: 760px)").matches) {
      setDrawer(true);  // back from an action in the list (chat.views._back_to)
    }
    attach(document);
    keepScrolled(true);  // a conversation opens at its newest message
    var form = composer();
    if (!form) return;
    var textarea = document.getElementById("composer-text");
    textarea.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (textarea.value.trim()) form.requestSubmit();
      }
    });
    form.addEventListener("htmx:beforeRequest", function (event) {
      if (event.detail.elt !== form) return;  // the key picker's own requests
      if (anyPending()) {
        event.preventDefault();
        setQueued(true);
      }
    });
    form.addEventListener("click", function (event) {
      if (event.target.closest("[data-action=unqueue]")) setQueued(false);
    });
    form.addEventListener("htmx:afterRequest", function (event) {
      if (event.detail.elt !== form) return;
      if (event.detail.successful) {
        textarea.value = "";
        document.getElementById("composer-error").textContent = "";
        var empty = document.getElementById("empty-chat");
        if (empty) empty.remove();
        keepScrolled(true);  // the reader's own message and the reply coming
      }
    });
    document.body.addEventListener("htmx:afterSwap", function (event) {
      attach(event.detail.target);
      keepScrolled();
    });
  });

  // Branches: editing a sent message opens an inline form (a <details>, so it also opens
  // without JS); Cancel closes it and puts the text back, Enter saves, Escape cancels.
  function editBox(element) { return element.closest("details.edit-message"); }

  function closeEdit(details) {
    var textarea = details.querySelector("textarea");
    if (textarea) textarea.value = textarea.defaultValue;
    var error = details.querySelector(".errors");
    if (error) error.textContent = "";
    details.open = false;
    var summary = details.querySelector("summary");
    if (summary) summary.focus();
  }

  function openedEdit(event) {
    var details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.matches(".edit-message")) return;
    if (!details.open) return;
    var textarea = details.querySelector("textarea");
    // `toggle` comes a task after the click: if the box has focus by then, the user is
    // typing or selecting in it already, and moving the caret would garble their edit.
    if (!textarea || document.activeElement === textarea) return;
    textarea.focus();
    textarea.setSelectionRange(textarea.value.length, textarea.value.length);
  }

  function editClicked(event) {
    var cancel = event.target.closest("[data-action=cancel-edit]");
    if (!cancel || !editBox(cancel)) return;
    event.preventDefault();  // without JS the link reloads the page, which closes it too
    closeEdit(editBox(cancel));
  }

  function editKeys(event) {
    var textarea = event.target;
    if (!(textarea instanceof HTMLTextAreaElement) || !editBox(textarea)) return;
    if (event.key === "Escape") {
      event.preventDefault();
      closeEdit(editBox(textarea));
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (textarea.value.trim()) textarea.form.requestSubmit();
    }
  }

  document.addEventListener("toggle", openedEdit, true);  // toggle does not bubble
  document.addEventListener("click", editClicked);
  document.addEventListener("keydown", editKeys);

  // The composer's model follows the picked key while it holds a suggestion (or nothing):
  // a key change puts the new key's first suggestion in, unless the model is one the new
  // key offers too; a model the user typed is kept.
  function suggestModel(event) {
    var config = event.detail && event.detail.requestConfig;
    var trigger = config && config.triggeringEvent;
    if (!config || !config.elt || config.elt.id !== "composer-key") return;
    var list = document.getElementById("model-options");
    var input = document.getElementById("composer-model");
    // Never under the user's cursor: suggestions that arrive while they type in the box
    // would mix with what they type.
    if (!list || !input || document.activeElement === input) return;
    var offered = Array.prototype.map.call(list.querySelectorAll("option"), function (o) { return o.value; });
    if (!input.value && offered.length) {
      input.value = input.dataset.suggested = offered[0];
      return;
    }
    if (!trigger || trigger.type !== "change") return;  // the page's first load keeps its model
    if (input.value !== input.dataset.suggested || offered.indexOf(input.value) >= 0) return;
    input.value = offered.length ? offered[0] : "";
    input.dataset.suggested = input.value;
  }

  // Continue: a reply that was stopped or cut off at the length limit is written on. The
  // form posts with htmx (the branch comes back, the reply growing) and without JS too.
  function continueForm(article) {
    var form = regenerateForm(article, "Continue");
    form.action = article.dataset.continueUrl;
    form.setAttribute("hx-post", article.dataset.continueUrl);
    form.setAttribute("hx-target", "#messages");
    form.setAttribute("hx-swap", "innerHTML");
    form.querySelector("button").dataset.action = "continue";
    if (window.htmx) window.htmx.process(form);
    return form;
  }
})();
