"""The upload page of ``jianmu serve`` (``GET /``), and the inspection sheet it shows.

One self-contained page (inline CSS and script, no fonts or scripts fetched: it works offline on
the local network): choose or drop the photos of one specimen (a phone's file input offers its
camera), send them, and read the answer: the inspection sheet of ``jianmu predict --html``
(:mod:`jianmu.report.predict_html`, made by the server from the same records: decision,
thumbnails, candidates, flags, Chinese names, quality notes, the record's hash).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The sheet renderer of the predict page, used as is: one look for an inspection sheet.
from jianmu.report.predict_html import PAGE_CSS, esc
from jianmu.report.predict_html import _sheets_section as sheets_section

# Served with the page: nothing but this origin, the page's own inline code and local pictures.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; connect-src 'self'; img-src 'self' data: blob:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

_CSS = """
form { display: grid; gap: 0.8em; max-width: 44em; }
label { display: grid; gap: 0.2em; font-weight: 600; }
input[type=text], select { font: inherit; padding: 4px 6px; }
#drop { border: 2px dashed #90a4ae; border-radius: 8px; padding: 1.2em; text-align: center;
        color: #455a64; }
#drop.over { background: #eceff1; border-color: #37474f; }
#chosen { display: flex; flex-wrap: wrap; gap: 10px; }
#chosen figure { margin: 0; max-width: 110px; font-size: 11px; overflow-wrap: anywhere; }
.buttons button { font: inherit; padding: 6px 18px; margin-right: 0.6em; }
#status { font-weight: 600; min-height: 1.4em; } #status.error { color: #b71c1c; }
"""

_SCRIPT = """
(() => {
  const form = document.getElementById("identify");
  const input = document.getElementById("photos");
  const drop = document.getElementById("drop");
  const list = document.getElementById("chosen");
  const send = document.getElementById("send");
  const status = document.getElementById("status");
  const result = document.getElementById("result");
  let chosen = [];
  const say = (text, error) => {
    status.textContent = text;
    status.className = error ? "error" : "";
  };
  const show = () => {
    list.replaceChildren(...chosen.map((file) => {
      const figure = document.createElement("figure");
      const picture = document.createElement("img");
      picture.className = "thumb";
      picture.alt = file.name;
      picture.src = URL.createObjectURL(file);
      const caption = document.createElement("figcaption");
      caption.textContent = file.name;
      figure.append(picture, caption);
      return figure;
    }));
    send.disabled = chosen.length === 0;
    document.getElementById("count").textContent = `${chosen.length} photo(s) chosen`;
  };
  const add = (files) => {
    chosen = chosen.concat([...files]);
    show();
  };
  input.addEventListener("change", () => {
    add(input.files);
    input.value = "";
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    add(event.dataTransfer.files);
  });
  document.getElementById("clear").addEventListener("click", () => {
    chosen = [];
    show();
    result.replaceChildren();
    delete result.dataset.verdict;
    say("");
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData();
    chosen.forEach((file) => body.append("photos", file, file.name));
    for (const key of ["specimen", "declared"]) {
      const value = form.elements[key].value.trim();
      if (value) body.append(key, value);
    }
    const model = encodeURIComponent(form.elements.model.value);
    send.disabled = true;
    result.replaceChildren();
    delete result.dataset.verdict;
    say("identifying ...");
    try {
      const response = await fetch(`v1/${model}/identify?sheet=true`, {method: "POST", body});
      const answer = await response.json();
      if (!response.ok) {
        say(`refused (${response.status}): ${answer.detail}`, true);
        return;
      }
      const specimen = answer.specimen;
      const declared = `declared ${specimen.declared}: ${specimen.decision}`;
      const decision = specimen.decision ? ` · ${declared}` : "";
      say(`${specimen.verdict}${decision} · record ${answer.record_sha256.slice(0, 16)}`);
      result.innerHTML = answer.sheet;  // made by the server from escaped text
      result.dataset.verdict = specimen.verdict;
    } catch (error) {
      say(`no answer from the server (${error})`, true);
    } finally {
      send.disabled = chosen.length === 0;
    }
  });
  show();
})();
"""


def upload_page(models: Sequence[str]) -> str:
    """The page, offering ``models`` (the first chosen)."""
    options = "".join(f'<option value="{esc(name)}">{esc(name)}</option>' for name in models)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>jianmu: identify a specimen</title><style>{PAGE_CSS}{_CSS}</style></head>",
            "<body><h1>Identify a specimen · 鉴定样本</h1>",
            '<form id="identify">',
            f'<label>Model · 模型 <select name="model">{options}</select></label>',
            '<div id="drop"><label>Photos of one specimen · 同一样本的照片'
            '<input type="file" id="photos" accept="image/*" multiple></label>'
            "<p>or drop them here · 或拖放到此处</p>"
            '<div id="chosen"></div><p id="count" class="note"></p></div>',
            '<label>Specimen (optional) · 样本编号 <input type="text" name="specimen" '
            'maxlength="200" autocomplete="off"></label>',
            '<label>Declared taxon (optional) · 申报名称 <input type="text" name="declared" '
            'maxlength="200" placeholder="e.g. Dalbergia odorifera, 降香黄檀, Dalbergia sp." '
            'autocomplete="off"></label>',
            '<div class="buttons"><button type="submit" id="send" disabled>Identify · 鉴定'
            '</button><button type="button" id="clear">Clear · 清除</button></div>',
            "</form>",
            '<p id="status" role="status"></p>',
            '<div id="result"></div>',
            f"<script>{_SCRIPT}</script>",
            "</body></html>",
        ]
    )


def sheet_html(
    photos: list[dict[str, Any]],
    specimen: dict[str, Any],
    summary: Mapping[str, Any],
    thumbnails: Mapping[str, bytes],
) -> str:
    """The inspection sheet of one specimen, as the predict page draws it."""
    return sheets_section(photos, [specimen], summary, thumbnails)
