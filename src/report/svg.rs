//! Inline SVG charts, generated as text: line charts (time or value on x) and grouped bar charts.
//!
//! Every chart is an `<svg class="chart">` with a fixed pixel size (so it renders at that size
//! without any stylesheet), a title, both axes with tick labels, and a legend when it has more
//! than one series. Drawn data carries `class="mark"`, which the page's self-check counts.
//! All text goes through [`escape`]; no `xmlns` or other URL is written (inline SVG in HTML
//! needs none, and the page must not name external resources).

use std::fmt::Write as _;

/// Series colours (colour-blind-friendly order, Okabe–Ito first); cycled, with dashes after one cycle.
const PALETTE: [&str; 8] = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000", "#999933"];

const WIDTH: f64 = 760.0;
const PLOT_HEIGHT: f64 = 240.0;
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_TOP: f64 = 36.0;
const LEGEND_MIN_ITEM_WIDTH: f64 = 120.0;
const LEGEND_MAX_CHARS: usize = 40;
const LEGEND_ROW: f64 = 18.0;

/// HTML/XML escaping of text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// (x, y); non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line (a threshold).
#[derive(Debug, Clone)]
pub struct RefLine {
    pub y: f64,
    pub label: String,
    pub colour: &'static str,
}

/// What the x axis shows.
#[derive(Debug, Clone)]
pub enum XAxis {
    /// Unix milliseconds, labelled as UTC clock times.
    Time,
    /// Plain values, with this axis label.
    Value(String),
}

/// A line chart.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub id: String,
    pub title: String,
    pub x: XAxis,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed axis ranges; otherwise from the data (and reference lines).
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub ref_lines: Vec<RefLine>,
    /// Draw the y = x diagonal (reliability diagrams).
    pub diagonal: bool,
}

/// A grouped bar chart: one group of bars per category, one bar per group entry.
#[derive(Debug, Clone)]
pub struct BarChart {
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    /// (name, one value per category).
    pub groups: Vec<(String, Vec<f64>)>,
}

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn dash(i: usize) -> &'static str {
    if (i / PALETTE.len()) % 2 == 1 {
        " stroke-dasharray=\"5 3\""
    } else {
        ""
    }
}

/// "Nice" tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k), about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let mut ticks = Vec::new();
    let mut k = first;
    while k * step <= hi + step * 1e-9 && ticks.len() < 50 {
        let v = k * step;
        // No "-0" label.
        ticks.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        k += 1.0;
    }
    ticks
}

/// Tick label for a value, with as many decimals as the tick spacing needs.
fn value_label(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 || step <= 0.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{v:.decimals$}")
}

/// Time ticks at a round step (1 s … 1 day) with labels `HH:MM:SS`, `HH:MM` or `MM-DD HH:MM`.
pub fn time_ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    const STEPS: [f64; 16] =
        [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3, 3600e3, 7200e3, 21600e3, 86400e3];
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![(lo, time_label(lo, 1e3, 0.0))];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let step = STEPS.into_iter().find(|s| *s >= raw).unwrap_or_else(|| (raw / 86400e3).ceil() * 86400e3);
    let mut out = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi && out.len() < 50 {
        out.push((t, time_label(t, step, hi - lo)));
        t += step;
    }
    if out.is_empty() {
        out.push((lo, time_label(lo, step, hi - lo)));
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of Unix milliseconds, or the number when out of range.
pub fn utc(ms: f64) -> String {
    if !(0.0..=253_402_300_799_000.0).contains(&ms) {
        return format!("{ms}");
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.trim_end_matches('Z').to_string()
}

fn time_label(ms: f64, step: f64, span: f64) -> String {
    let full = utc(ms);
    if full.len() < 19 {
        return full;
    }
    if span > 86400e3 {
        format!("{} {}", &full[5..10], &full[11..16])
    } else if step >= 60e3 {
        full[11..16].to_string()
    } else {
        full[11..19].to_string()
    }
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((a, b)) => Some((a.min(v), b.max(v))),
    })
}

/// The data's range, widened around a single value (by `pad`, or 10 % of it when `None`).
fn padded(range: Option<(f64, f64)>, fallback: (f64, f64), pad: Option<f64>) -> (f64, f64) {
    match range {
        None => fallback,
        Some((a, b)) if b > a => (a, b),
        Some((a, _)) => {
            let pad = pad.unwrap_or(if a == 0.0 { 1.0 } else { a.abs() * 0.1 });
            (a - pad, a + pad)
        }
    }
}

/// The legend's rows below the plot, and its height.
fn legend(out: &mut String, names: &[(String, &'static str, &'static str)], top: f64) -> f64 {
    if names.len() < 2 {
        return 0.0;
    }
    // Items as wide as the longest label needs (about 6.6 px a character at 11 px).
    let longest = names.iter().map(|(n, _, _)| n.chars().count().min(LEGEND_MAX_CHARS)).max().unwrap_or(0);
    let item_width = (30.0 + 6.6 * longest as f64).clamp(LEGEND_MIN_ITEM_WIDTH, WIDTH - MARGIN_LEFT);
    let per_row = (((WIDTH - MARGIN_LEFT) / item_width).floor() as usize).max(1);
    let _ = write!(out, "<g class=\"legend\">");
    for (i, (name, colour, dash)) in names.iter().enumerate() {
        let x = MARGIN_LEFT + (i % per_row) as f64 * item_width;
        let y = top + (i / per_row) as f64 * LEGEND_ROW;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y1:.1}\" stroke=\"{colour}\" stroke-width=\"3\"{dash}/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" class=\"legend-label\">{label}</text>",
            y1 = y - 4.0,
            x2 = x + 18.0,
            tx = x + 24.0,
            ty = y,
            label = escape(&shorten(name, LEGEND_MAX_CHARS)),
        );
    }
    out.push_str("</g>");
    names.len().div_ceil(per_row) as f64 * LEGEND_ROW + 6.0
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{cut}…")
}

/// The whole `<svg>` of a chart: `body`, then the legend of `names` below `bottom` (the lowest
/// axis label), the height fitted to both.
fn close_chart(
    id: &str,
    title: &str,
    body: &str,
    names: &[(String, &'static str, &'static str)],
    bottom: f64,
) -> String {
    let mut legend_svg = String::new();
    let legend_height = legend(&mut legend_svg, names, bottom + 12.0);
    let mut out = String::new();
    open_svg(&mut out, id, title, bottom + legend_height + 8.0);
    out.push_str(body);
    out.push_str(&legend_svg);
    out.push_str("</svg>");
    out
}

fn open_svg(out: &mut String, id: &str, title: &str, height: f64) {
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"{id}\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" \
         role=\"img\" aria-labelledby=\"{id}-title\"><title id=\"{id}-title\">{t}</title>\
         <text class=\"chart-title\" x=\"{x}\" y=\"20\">{t}</text>",
        id = escape(id),
        t = escape(title),
        x = MARGIN_LEFT,
    );
}

/// Renders a line chart.
pub fn line_chart(chart: &LineChart) -> String {
    let points = || chart.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    // A single window on a time axis gets a minute either side, not 10 % of the epoch.
    let x_pad = matches!(chart.x, XAxis::Time).then_some(60_000.0);
    let (x0, x1) = chart.x_range.unwrap_or_else(|| padded(extent(points().map(|p| p.0)), (0.0, 1.0), x_pad));
    let (y0, y1) = chart.y_range.unwrap_or_else(|| {
        let data = extent(points().map(|p| p.1).chain(chart.ref_lines.iter().map(|r| r.y)));
        let (a, b) = padded(data, (0.0, 1.0), None);
        // Rates and statistics start at zero: the baseline makes the lines comparable.
        let a = if a >= 0.0 { 0.0 } else { a };
        (a, b + (b - a) * 0.05)
    });
    let (plot_l, plot_r, plot_t) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP);
    let plot_b = plot_t + PLOT_HEIGHT;
    let sx = |x: f64| plot_l + (x - x0) / (x1 - x0) * (plot_r - plot_l);
    let sy = |y: f64| plot_b - (y - y0) / (y1 - y0) * (plot_b - plot_t);

    let mut body = String::new();
    // Grid and y ticks.
    y_grid(&mut body, &nice_ticks(y0, y1, 5), plot_l, plot_r, sy);
    // X ticks.
    let xt: Vec<(f64, String)> = match &chart.x {
        XAxis::Time => time_ticks(x0, x1, 6),
        XAxis::Value(_) => {
            let t = nice_ticks(x0, x1, 6);
            let step = if t.len() > 1 { t[1] - t[0] } else { 1.0 };
            t.into_iter().map(|v| (v, value_label(v, step))).collect()
        }
    };
    for (v, label) in &xt {
        let x = sx(*v);
        let _ = write!(
            body,
            "<line class=\"axis\" x1=\"{x:.1}\" y1=\"{plot_b}\" x2=\"{x:.1}\" y2=\"{y2}\"/>\
             <text class=\"tick\" x=\"{x:.1}\" y=\"{ty}\" text-anchor=\"middle\">{label}</text>",
            y2 = plot_b + 4.0,
            ty = plot_b + 17.0,
            label = escape(label),
        );
    }
    // Axes and their labels.
    let x_label = match &chart.x {
        XAxis::Time => "time (UTC)".to_string(),
        XAxis::Value(l) => l.clone(),
    };
    axes(&mut body, (plot_l, plot_r, plot_t, plot_b), 34.0, &x_label, &chart.y_label);
    if chart.diagonal {
        let (a, b) = (x0.max(y0), x1.min(y1));
        let _ = write!(
            body,
            "<line class=\"diagonal\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\"/>",
            sx(a),
            sy(a),
            sx(b),
            sy(b)
        );
    }
    for (k, r) in chart.ref_lines.iter().enumerate() {
        if r.y < y0 || r.y > y1 {
            continue;
        }
        let y = sy(r.y);
        // Labels alternate between the left and the right end, so that close lines stay legible.
        let (tx, anchor) = if k % 2 == 0 { (plot_l + 4.0, "start") } else { (plot_r - 2.0, "end") };
        let _ = write!(
            body,
            "<line class=\"threshold\" x1=\"{plot_l}\" y1=\"{y:.1}\" x2=\"{plot_r}\" y2=\"{y:.1}\" stroke=\"{c}\"/>\
             <text class=\"threshold-label\" x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"{anchor}\" fill=\"{c}\">{label}</text>",
            c = r.colour,
            ty = y - 3.0,
            label = escape(&r.label),
        );
    }
    let mut names = Vec::new();
    for (i, s) in chart.series.iter().enumerate() {
        let (c, d) = (colour(i), dash(i));
        names.push((s.name.clone(), c, d));
        let pts: Vec<(f64, f64)> =
            s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| (sx(x), sy(y))).collect();
        if pts.len() > 1 {
            let list: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                body,
                "<polyline class=\"mark line\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{d} points=\"{}\"><title>{}</title></polyline>",
                list.join(" "),
                escape(&s.name)
            );
        }
        for (x, y) in pts {
            let _ = write!(body, "<circle class=\"mark point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{c}\"/>");
        }
    }
    close_chart(&chart.id, &chart.title, &body, &names, plot_b + 44.0)
}

/// Renders a grouped bar chart.
pub fn bar_chart(chart: &BarChart) -> String {
    let (plot_l, plot_r, plot_t) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT, MARGIN_TOP);
    let plot_b = plot_t + PLOT_HEIGHT;
    let max = chart.groups.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let y1 = if max > 0.0 { max * 1.05 } else { 1.0 };
    let sy = |y: f64| plot_b - y / y1 * (plot_b - plot_t);
    let n = chart.categories.len().max(1);
    let slot = (plot_r - plot_l) / n as f64;
    let bar = (slot * 0.8 / chart.groups.len().max(1) as f64).max(1.0);

    let mut body = String::new();
    y_grid(&mut body, &nice_ticks(0.0, y1, 5), plot_l, plot_r, sy);
    let mut names = Vec::new();
    for (g, (name, values)) in chart.groups.iter().enumerate() {
        let c = colour(g);
        names.push((name.clone(), c, ""));
        for (i, v) in values.iter().enumerate().take(n) {
            let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
            let x = plot_l + i as f64 * slot + slot * 0.1 + g as f64 * bar;
            let y = sy(v);
            let _ = write!(
                body,
                "<rect class=\"mark bar\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{c}\">\
                 <title>{cat}: {name} {v:.4}</title></rect>",
                h = plot_b - y,
                cat = escape(chart.categories.get(i).map(String::as_str).unwrap_or("")),
                name = escape(name),
            );
        }
    }
    // Category labels, rotated so that bin ranges fit; every k-th one when there are many.
    let every = n.div_ceil(20).max(1);
    for (i, cat) in chart.categories.iter().enumerate() {
        if i % every != 0 {
            continue;
        }
        let x = plot_l + (i as f64 + 0.5) * slot;
        let _ = write!(
            body,
            "<text class=\"tick\" transform=\"translate({x:.1} {y}) rotate(-35)\" text-anchor=\"end\">{label}</text>",
            y = plot_b + 12.0,
            label = escape(&shorten(cat, 14)),
        );
    }
    axes(&mut body, (plot_l, plot_r, plot_t, plot_b), 62.0, &chart.x_label, &chart.y_label);
    close_chart(&chart.id, &chart.title, &body, &names, plot_b + 72.0)
}

/// Horizontal grid lines with their value labels at `ticks`, `sy` mapping a value to its y.
fn y_grid(body: &mut String, ticks: &[f64], plot_l: f64, plot_r: f64, sy: impl Fn(f64) -> f64) {
    let step = if ticks.len() > 1 { ticks[1] - ticks[0] } else { 1.0 };
    for t in ticks {
        let y = sy(*t);
        let _ = write!(
            body,
            "<line class=\"grid\" x1=\"{plot_l}\" y1=\"{y:.1}\" x2=\"{plot_r}\" y2=\"{y:.1}\"/>\
             <text class=\"tick\" x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
            tx = plot_l - 6.0,
            ty = y + 4.0,
            label = value_label(*t, step),
        );
    }
}

/// The two axis lines of the plot area `(left, right, top, bottom)` and their labels; the x label
/// sits `x_label_below` under the plot (room for the tick labels).
fn axes(
    body: &mut String,
    (plot_l, plot_r, plot_t, plot_b): (f64, f64, f64, f64),
    x_label_below: f64,
    x_label: &str,
    y_label: &str,
) {
    let _ = write!(
        body,
        "<line class=\"axis\" x1=\"{plot_l}\" y1=\"{plot_t}\" x2=\"{plot_l}\" y2=\"{plot_b}\"/>\
         <line class=\"axis\" x1=\"{plot_l}\" y1=\"{plot_b}\" x2=\"{plot_r}\" y2=\"{plot_b}\"/>\
         <text class=\"axis-label\" x=\"{xc:.1}\" y=\"{xl}\" text-anchor=\"middle\">{xlab}</text>\
         <text class=\"axis-label\" transform=\"translate(14 {yc:.1}) rotate(-90)\" text-anchor=\"middle\">{ylab}</text>",
        xc = (plot_l + plot_r) / 2.0,
        xl = plot_b + x_label_below,
        yc = (plot_t + plot_b) / 2.0,
        xlab = escape(x_label),
        ylab = escape(y_label),
    );
}
