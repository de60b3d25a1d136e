//! `strftime_now(fmt)` for chat templates: C/Python `strftime` over the current UTC time
//! (or a fixed clock set in [`super::TemplateOptions`], for reproducible renders).
//!
//! Supports the conversions templates use (`%Y %m %d %B %b %A %a %H %M %S …`) and the glibc
//! `-` flag (`%-d`) that Python on Linux passes through. Unknown conversions are copied as-is.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tm {
    year: i64,
    month: u32, // 1..=12
    day: u32,   // 1..=31
    hour: u32,
    minute: u32,
    second: u32,
    weekday: u32, // 0 = Monday
    yday: u32,    // 1..=366
}

/// Seconds since the Unix epoch of `t` (negative before 1970).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// UTC broken-down time of a Unix timestamp.
pub fn utc(secs: i64) -> Tm {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(month - 1) as usize] + day + u32::from(leap && month > 2);
    Tm {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        minute: (rem % 3600 / 60) as u32,
        second: (rem % 60) as u32,
        // 1970-01-01 was a Thursday (3 with Monday = 0).
        weekday: (days + 3).rem_euclid(7) as u32,
        yday,
    }
}

/// Formats `tm` like C `strftime(fmt)` in the C locale.
pub fn strftime(fmt: &str, tm: &Tm) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let no_pad = chars.peek() == Some(&'-');
        if no_pad {
            chars.next();
        }
        let Some(conv) = chars.next() else {
            out.push('%');
            break;
        };
        let num = |out: &mut String, v: i64, width: usize| {
            if no_pad {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        let hour12 = if tm.hour % 12 == 0 { 12 } else { tm.hour % 12 };
        match conv {
            'Y' => {
                let _ = write!(out, "{}", tm.year);
            }
            'y' => num(&mut out, tm.year.rem_euclid(100), 2),
            'C' => num(&mut out, tm.year.div_euclid(100), 2),
            'm' => num(&mut out, tm.month.into(), 2),
            'd' => num(&mut out, tm.day.into(), 2),
            'e' => {
                if no_pad {
                    let _ = write!(out, "{}", tm.day);
                } else {
                    let _ = write!(out, "{:2}", tm.day);
                }
            }
            'H' => num(&mut out, tm.hour.into(), 2),
            'I' => num(&mut out, hour12.into(), 2),
            'M' => num(&mut out, tm.minute.into(), 2),
            'S' => num(&mut out, tm.second.into(), 2),
            'j' => num(&mut out, tm.yday.into(), 3),
            'p' => out.push_str(if tm.hour < 12 { "AM" } else { "PM" }),
            'B' => out.push_str(MONTHS[(tm.month - 1) as usize]),
            'b' | 'h' => out.push_str(&MONTHS[(tm.month - 1) as usize][..3]),
            'A' => out.push_str(DAYS[tm.weekday as usize]),
            'a' => out.push_str(&DAYS[tm.weekday as usize][..3]),
            'u' => {
                let _ = write!(out, "{}", tm.weekday + 1);
            }
            'w' => {
                let _ = write!(out, "{}", (tm.weekday + 1) % 7);
            }
            'F' => {
                let _ = write!(out, "{}-{:02}-{:02}", tm.year, tm.month, tm.day);
            }
            'D' => {
                let _ = write!(
                    out,
                    "{:02}/{:02}/{:02}",
                    tm.month,
                    tm.day,
                    tm.year.rem_euclid(100)
                );
            }
            'T' => {
                let _ = write!(out, "{:02}:{:02}:{:02}", tm.hour, tm.minute, tm.second);
            }
            'R' => {
                let _ = write!(out, "{:02}:{:02}", tm.hour, tm.minute);
            }
            'Z' => out.push_str("UTC"),
            'z' => out.push_str("+0000"),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            '%' => out.push('%'),
            other => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        // 2024-02-29T13:05:09Z, a Thursday.
        let tm = utc(1_709_211_909);
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %a %B %b %j %-d %e %I%p %%", &tm),
            "2024-02-29 13:05:09 Thursday Thu February Feb 060 29 29 01PM %"
        );
        assert_eq!(strftime("%d %b %Y", &utc(0)), "01 Jan 1970");
        assert_eq!(
            strftime("%-d %B %Y %A", &utc(1_735_689_600)),
            "1 January 2025 Wednesday"
        );
        assert_eq!(strftime("%Q", &utc(0)), "%Q");
    }
}
