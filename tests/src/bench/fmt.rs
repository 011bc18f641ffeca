//! Numbers as text in the benchmark programs' tables and lines, one definition each.

/// 1234567.8 -> "1,234,568".
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "?".into();
    }
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Microseconds as text: `850 µs`, `2.35 ms`, `12.3 ms`.
pub fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "?".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// Seconds as text: `850 ms`, `12.3 s`, `3 min 5 s`.
pub fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s >= 120.0 {
        format!("{} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// KiB as text, MiB or GiB: `512 MiB`, `3.12 GiB`; `unknown` for `None`.
pub fn fmt_kib(kib: Option<u64>) -> String {
    match kib {
        None => "unknown".into(),
        Some(k) if k >= 1024 * 1024 => format!("{:.2} GiB", k as f64 / 1024.0 / 1024.0),
        Some(k) => format!("{:.0} MiB", k as f64 / 1024.0),
    }
}

/// Bytes as text, MiB or GiB: `12.5 MiB`, `3.12 GiB`.
pub fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

/// A ratio as a percentage: `0.5` -> `50%`; `?` when not finite.
pub fn pct(r: f64) -> String {
    if r.is_finite() {
        format!("{:.0}%", r * 100.0)
    } else {
        "?".into()
    }
}

/// A ratio as a factor: `2.5` -> `2.50x`; `?` when not finite.
pub fn times(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "?".into()
    }
}

/// KiB as text, always in MiB: `3200 MiB` (bench_wallet's lines); `unknown` for `None`.
pub fn mib_text(kib: Option<u64>) -> String {
    kib.map_or("unknown".into(), |k| {
        format!("{:.0} MiB", k as f64 / 1024.0)
    })
}

/// 1000000 -> "1M", 10000 -> "10k".
pub fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}
