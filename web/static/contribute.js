// The contribute page: lists the public projects that need providers (or joins the one in ?project=N, with
// &site_key=K for a site-key project), and runs the provider after the visitor's click. The choice is remembered
// in localStorage until "Stop". ?software=1 accepts a software GPU adapter.
"use strict";
(function () {
  var params = new URLSearchParams(location.search);
  var CHOICE = "daig-contribute-choice";
  var provider = null;
  var $ = function (id) { return document.getElementById(id); };

  function remembered() {
    try { return JSON.parse(localStorage.getItem(CHOICE) || "null"); } catch (e) { return null; }
  }

  function start(project, siteKey, name) {
    var choice = { project: project, siteKey: siteKey || null, name: name || null };
    try { localStorage.setItem(CHOICE, JSON.stringify(choice)); } catch (e) {}
    $("projects").hidden = true;
    $("panel").hidden = false;
    $("f-project").textContent = name ? name + " (#" + project + ")" : project ? "#" + project : "any public project";
    provider = new DAIG.Provider({
      project: project, siteKey: siteKey, throttle: Number($("throttle").value) / 100,
      runWhenHidden: $("hidden-run").checked, software: params.get("software") === "1"
    });
    provider.onStatus(show);
    provider.start();
    window.daigProvider = provider;
  }

  var words = { starting: "Starting…", connecting: "Connecting to the server…", waiting: "Waiting for work…",
    training: "Training", paused: "Paused", stopped: "Stopped", error: "Error" };
  function show(s) {
    $("state").textContent = (words[s.state] || s.state) + (s.message && (s.state === "error" || s.state === "stopped") ? ": " + s.message : "");
    $("state").dataset.state = s.state;
    if (s.backend) $("f-backend").textContent = (s.backend === "webgpu" ? "WebGPU: " : "CPU: ") + (s.adapter || "");
    if (s.project && !$("f-project").dataset.fixed) $("f-project").textContent = "#" + s.project;
    if (s.batches !== undefined) {
      $("f-batches").textContent = String(s.batches);
      $("f-rate").textContent = s.samplesPerSec ? s.samplesPerSec.toFixed(0) : "–";
      $("f-applied").textContent = String(s.applied);
      $("f-credit").textContent = String(s.credit);
    }
  }

  $("throttle").addEventListener("input", function () {
    $("share").textContent = this.value + "%";
    if (provider) provider.setThrottle(Number(this.value) / 100);
  });
  $("hidden-run").addEventListener("change", function () { if (provider) provider.setRunWhenHidden(this.checked); });
  $("pause").addEventListener("click", function () {
    if (!provider) return;
    if (provider.userPaused) { provider.resume(); this.textContent = "Pause"; } else { provider.pause(); this.textContent = "Resume"; }
  });
  $("stop").addEventListener("click", function () {
    try { localStorage.removeItem(CHOICE); } catch (e) {}
    if (provider) provider.stop();
    provider = null;
    $("panel").hidden = true;
    $("projects").hidden = false;
    list();
  });

  function list() {
    var ul = $("project-list");
    ul.textContent = "";
    fetch("/api/public/projects").then(function (r) { return r.json(); }).then(function (body) {
      var projects = (body.projects || []).filter(function (p) { return p.state === "running"; });
      $("projects-empty").hidden = projects.length > 0;
      projects.forEach(function (p) {
        var li = document.createElement("li");
        var h = document.createElement("h3");
        h.textContent = p.name;
        var info = document.createElement("p");
        info.textContent = p.params.toLocaleString() + " parameters, " + p.layers + " layers · epoch " + (p.epoch + 1) +
          " · " + Math.round(p.progress * 100) + "% done · " + p.providers + (p.providers === 1 ? " provider" : " providers");
        var button = document.createElement("button");
        button.type = "button";
        button.className = "primary";
        button.textContent = "Contribute";
        button.setAttribute("aria-label", "Contribute to " + p.name);
        button.dataset.project = String(p.id);
        button.addEventListener("click", function () { start(p.id, null, p.name); });
        li.appendChild(h);
        li.appendChild(info);
        li.appendChild(button);
        ul.appendChild(li);
      });
    }, function () {
      $("projects-empty").hidden = false;
      $("projects-empty").textContent = "The server cannot list projects right now.";
    });
  }

  var linked = params.get("project");
  var choice = remembered();
  if (linked) {
    // Joined by link: one project, after the click.
    var ul = $("project-list");
    $("projects-title").textContent = "Project #" + linked;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "primary";
    button.textContent = "Contribute to project #" + linked;
    button.dataset.project = linked;
    button.addEventListener("click", function () { start(Number(linked), params.get("site_key"), null); });
    var li = document.createElement("li");
    li.appendChild(button);
    ul.appendChild(li);
    if (choice && String(choice.project) === linked) start(Number(linked), params.get("site_key"), null);
  } else if (choice) {
    start(choice.project, choice.siteKey, choice.name);
  } else {
    list();
  }
})();
