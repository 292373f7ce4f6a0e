// BYOK chat: live replies over Server-Sent Events, the composer's keys, stop and regenerate.
// Every piece of HTML inserted here was rendered and sanitised on the server (nh3); text the
// page builds itself goes in as text, never as HTML.
(function () {
  "use strict";

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

  function updateComposer() {
    var form = composer();
    if (!form) return;
    var busy = anyPending();
    form.querySelector("textarea").disabled = busy;
    form.querySelector("button[type=submit]").disabled = busy;
    form.classList.toggle("busy", busy);
    if (!busy) form.querySelector("textarea").focus();
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
        if (links[data.action]) {
          var link = document.createElement("a");
          link.href = links[data.action][0];
          link.textContent = links[data.action][1];
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
    attach(document);
    keepScrolled(true);  // a conversation opens at its newest message
    var form = composer();
    if (!form) return;
    var textarea = form.querySelector("textarea");
    textarea.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (textarea.value.trim()) form.requestSubmit();
      }
    });
    form.addEventListener("htmx:afterRequest", function (event) {
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
    if (!textarea) return;
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

  // New chat: the model field starts with the chosen key's first suggestion, and follows
  // the key while it still holds a suggestion; a model the user typed is kept.
  function suggestModel() {
    var list = document.getElementById("model-options");
    var input = document.querySelector("input[list=model-options]");
    if (!list || !input) return;
    if (input.value && input.value !== input.dataset.suggested) return;
    var first = list.querySelector("option");
    input.value = first ? first.value : "";
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
