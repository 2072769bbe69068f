//! The wall clock: from the RTC, or from the build time when the RTC is missing or older than
//! the build (boards without a battery boot in 1970, and TLS certificates are then "not yet
//! valid").

use crate::bootinfo::ClockInfo;
use std::os::fd::AsRawFd;
use tracing::{info, warn};

/// `struct rtc_time` (nine ints).
#[repr(C)]
#[derive(Default)]
struct RtcTime {
    sec: i32,
    min: i32,
    hour: i32,
    mday: i32,
    mon: i32,
    year: i32,
    wday: i32,
    yday: i32,
    isdst: i32,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), month 1-12.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn read_rtc() -> Option<i64> {
    let f = std::fs::File::open("/dev/rtc0").ok()?;
    let mut t = RtcTime::default();
    // RTC_RD_TIME = _IOR('p', 0x09, struct rtc_time)
    const RTC_RD_TIME: libc::c_ulong = 0x8024_7009;
    // SAFETY: RTC_RD_TIME writes one rtc_time through the pointer, which points at `t`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RTC_RD_TIME as _, &mut t) };
    if r < 0 || !(0..=11).contains(&t.mon) || !(1..=31).contains(&t.mday) {
        return None;
    }
    let days = days_from_civil(t.year as i64 + 1900, t.mon as u32 + 1, t.mday as u32);
    Some(days * 86_400 + t.hour as i64 * 3600 + t.min as i64 * 60 + t.sec as i64)
}

/// Civil date (year, month 1-12, day 1-31) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn write_rtc(unix: i64) -> std::io::Result<()> {
    let f = std::fs::File::options().write(true).open("/dev/rtc0")?;
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    let t = RtcTime {
        sec: (secs % 60) as i32,
        min: (secs / 60 % 60) as i32,
        hour: (secs / 3600) as i32,
        mday: d as i32,
        mon: m as i32 - 1,
        year: (y - 1900) as i32,
        ..RtcTime::default()
    };
    // RTC_SET_TIME = _IOW('p', 0x0a, struct rtc_time)
    const RTC_SET_TIME: libc::c_ulong = 0x4024_700a;
    // SAFETY: RTC_SET_TIME reads one rtc_time through the pointer, which points at `t`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RTC_SET_TIME as _, &t) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the system clock to `unix` (seconds, UTC) and, where there is one, the RTC, so the
/// time survives a reboot. Times before 2000 or after 2200 are refused.
pub fn set(unix: i64) -> Result<(), String> {
    if !(946_684_800..=7_258_118_400).contains(&unix) {
        return Err(format!(
            "refusing to set the clock to {unix} (outside 2000-2200)"
        ));
    }
    crate::sys::set_wall_secs(unix).map_err(|e| format!("settimeofday: {e}"))?;
    match write_rtc(unix) {
        Ok(()) => info!("clock set by the operator (system clock and RTC)"),
        Err(e) => warn!("clock set by the operator; RTC not written: {e}"),
    }
    Ok(())
}

/// Makes sure the clock is no earlier than `build_epoch`.
pub fn ensure_sane(build_epoch: i64) -> ClockInfo {
    let now = crate::sys::wall_secs();
    if now >= build_epoch {
        return ClockInfo {
            source: "rtc".into(),
            at_boot: now,
        };
    }
    // The kernel may not have set the clock (RTC driver loaded as a module): try ourselves.
    if let Some(rtc) = read_rtc().filter(|t| *t >= build_epoch)
        && crate::sys::set_wall_secs(rtc).is_ok()
    {
        info!("clock set from RTC");
        return ClockInfo {
            source: "rtc".into(),
            at_boot: rtc,
        };
    }
    match crate::sys::set_wall_secs(build_epoch) {
        Ok(()) => warn!("no trustworthy RTC: clock set to the build time"),
        Err(e) => warn!("could not set the clock: {e}"),
    }
    ClockInfo {
        source: "build-time".into(),
        at_boot: build_epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 23) * 86_400, 1_795_392_000);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn civil_round_trip() {
        for days in [-1, 0, 59, 60, 11_017, 20_780, 47_541, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
