//! A minimal SVG line chart for the simulators' reports: a frame with a title and axes, tick
//! labels and polylines. Hand-written, as two small charts do not justify a plotting crate.

use std::fmt::Write;

/// The chart's size and the margins around its plot area, in pixels.
pub struct Frame {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub bottom: f64,
    pub top: f64,
    pub right: f64,
}

impl Frame {
    /// The x pixel of `value` on an axis from 0 to `max`.
    pub fn x(&self, value: f64, max: f64) -> f64 {
        self.left + value / max.max(f64::MIN_POSITIVE) * (self.width - self.left - self.right)
    }

    /// The y pixel of `fraction` (0 at the bottom axis, 1 at the top).
    pub fn y(&self, fraction: f64) -> f64 {
        self.height - self.bottom - fraction * (self.height - self.bottom - self.top)
    }

    /// The document's start: background, title and both axes.
    pub fn open(&self, title: &str) -> String {
        let (w, h, l, t) = (self.width, self.height, self.left, self.top);
        let (axis_y, axis_end) = (h - self.bottom, w - self.right);
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{l}\" y=\"18\" font-size=\"14\">{title}</text>\n\
             <line x1=\"{l}\" y1=\"{axis_y}\" x2=\"{axis_end}\" y2=\"{axis_y}\" stroke=\"black\"/>\n\
             <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{axis_y}\" stroke=\"black\"/>\n"
        )
    }

    /// A label left of the y axis at pixel `y`, and one under the x axis at pixel `x`.
    pub fn ticks(&self, svg: &mut String, y: f64, y_label: &str, x: f64, x_label: &str) {
        let _ = writeln!(
            svg,
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{y_label}</text>",
            self.left - 6.0,
            y + 4.0
        );
        let _ = writeln!(
            svg,
            "<text x=\"{x:.0}\" y=\"{:.0}\" text-anchor=\"middle\">{x_label}</text>",
            self.height - self.bottom + 18.0
        );
    }

    /// A line through `points` (pixels).
    pub fn polyline(svg: &mut String, points: impl Iterator<Item = (f64, f64)>, color: &str) {
        let points: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
    }
}
