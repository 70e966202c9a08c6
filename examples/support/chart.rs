//! Small SVG charts, written as text: a line chart (RSS over time) and a
//! grouped bar chart (throughput relative to a baseline). Shared by the
//! demo and the comparison harness (`benches/benches/compare`); no plotting
//! crate is needed for two kinds of chart.

use std::fmt::Write;

/// One colour per series, in series order; readable on white and by most
/// colour-blind readers (Okabe-Ito).
pub const COLORS: [&str; 6] = ["#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"];

/// A named line: `(x, y)` points in data units.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// A panel's place and labels.
pub struct Frame<'a> {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
}

const LEFT: f64 = 60.0;
const RIGHT: f64 = 130.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

/// A round tick step that splits `0..max` into at most about five parts.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude)
}

fn label(v: f64) -> String {
    if v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The frame, title, axis labels, y grid from 0 to `y_max`, and the legend.
fn axes(out: &mut String, f: &Frame, y_max: f64, legend: &[&str]) {
    let (x0, y0) = (f.x + LEFT, f.y + TOP);
    let (w, h) = (f.width - LEFT - RIGHT, f.height - TOP - BOTTOM);
    let _ =
        writeln!(out, "<text x='{:.0}' y='{:.0}' font-size='14' font-weight='bold'>{}</text>", x0, f.y + 18.0, f.title);
    let step = tick_step(y_max);
    let mut v = 0.0;
    while v <= y_max * 1.0001 {
        let y = y0 + h - h * v / y_max;
        let _ = writeln!(
            out,
            "<line x1='{x0:.1}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}' stroke='#ddd'/>\
             <text x='{:.1}' y='{:.1}' text-anchor='end'>{}</text>",
            x0 + w,
            x0 - 6.0,
            y + 4.0,
            label(v)
        );
        v += step;
    }
    let _ = writeln!(
        out,
        "<rect x='{x0:.1}' y='{y0:.1}' width='{w:.1}' height='{h:.1}' fill='none' stroke='#444'/>\
         <text x='{:.1}' y='{:.1}' text-anchor='middle'>{}</text>\
         <text transform='translate({:.1},{:.1}) rotate(-90)' text-anchor='middle'>{}</text>",
        x0 + w / 2.0,
        y0 + h + 34.0,
        f.x_label,
        f.x + 14.0,
        y0 + h / 2.0,
        f.y_label
    );
    for (i, name) in legend.iter().enumerate() {
        let ly = y0 + 8.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x='{:.1}' y='{:.1}' width='14' height='10' fill='{}'/><text x='{:.1}' y='{:.1}'>{}</text>",
            x0 + w + 12.0,
            ly - 9.0,
            COLORS[i % COLORS.len()],
            x0 + w + 30.0,
            ly,
            name
        );
    }
}

/// Lines of `series` over shared axes starting at zero.
pub fn line_chart(out: &mut String, f: &Frame, series: &[Series]) {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.0).fold(f64::MIN_POSITIVE, f64::max);
    let y_max = all().map(|p| p.1).fold(f64::MIN_POSITIVE, f64::max) * 1.05;
    let legend: Vec<&str> = series.iter().map(|s| s.name).collect();
    axes(out, f, y_max, &legend);
    let (x0, y0) = (f.x + LEFT, f.y + TOP);
    let (w, h) = (f.width - LEFT - RIGHT, f.height - TOP - BOTTOM);
    let step = tick_step(x_max);
    let mut v = 0.0;
    while v <= x_max * 1.0001 {
        let x = x0 + w * v / x_max;
        let _ = writeln!(out, "<text x='{x:.1}' y='{:.1}' text-anchor='middle'>{}</text>", y0 + h + 16.0, label(v));
        v += step;
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> =
            s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", x0 + w * x / x_max, y0 + h - h * y / y_max)).collect();
        let _ = writeln!(
            out,
            "<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>",
            COLORS[i % COLORS.len()],
            points.join(" ")
        );
    }
}

/// Bars grouped by category: `values[c][s]` is series `s` in category `c`
/// (NaN draws nothing). `reference` draws a dashed line across at that
/// value (1.0 for "as fast as the baseline").
pub fn bar_chart(
    out: &mut String,
    f: &Frame,
    categories: &[&str],
    series: &[&str],
    values: &[Vec<f64>],
    reference: Option<f64>,
) {
    let y_max =
        values.iter().flatten().copied().filter(|v| v.is_finite()).fold(reference.unwrap_or(0.0), f64::max) * 1.1;
    axes(out, f, y_max, series);
    let (x0, y0) = (f.x + LEFT, f.y + TOP);
    let (w, h) = (f.width - LEFT - RIGHT, f.height - TOP - BOTTOM);
    let slot = w / categories.len().max(1) as f64;
    let bar = slot * 0.8 / series.len().max(1) as f64;
    for (c, name) in categories.iter().enumerate() {
        let cx = x0 + slot * c as f64;
        let _ = writeln!(
            out,
            "<text x='{:.1}' y='{:.1}' text-anchor='middle' font-size='10'>{name}</text>",
            cx + slot / 2.0,
            y0 + h + 16.0
        );
        for (s, &v) in values[c].iter().enumerate() {
            if !v.is_finite() {
                continue;
            }
            let bh = h * v / y_max;
            let _ = writeln!(
                out,
                "<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{bh:.1}' fill='{}'><title>{} {}: {v:.2}</title></rect>",
                cx + slot * 0.1 + bar * s as f64,
                y0 + h - bh,
                bar,
                COLORS[s % COLORS.len()],
                name,
                series[s]
            );
        }
    }
    if let Some(r) = reference {
        let y = y0 + h - h * r / y_max;
        let _ = writeln!(
            out,
            "<line x1='{x0:.1}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}' stroke='#000' stroke-dasharray='5,4'/>",
            x0 + w
        );
    }
}

/// Wraps chart bodies into a standalone SVG document.
pub fn document(width: f64, height: f64, body: &str) -> String {
    format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0}' height='{height:.0}' \
         font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n{body}</svg>\n"
    )
}
