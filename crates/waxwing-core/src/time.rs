//! XEP-0082 timestamps: the formatter lives in `waxwing_proto::datetime`
//! beside the one parser; this module adds the clock.

use std::time::SystemTime;

/// `2026-11-25T12:48:18.123Z` for `t` (UTC, millisecond precision).
pub fn xep0082(t: SystemTime) -> String {
    waxwing_proto::datetime::format(t)
}

/// The current time in XEP-0082 form.
pub fn now() -> String {
    xep0082(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_known_instants() {
        assert_eq!(xep0082(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(xep0082(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(xep0082(leap), "2000-02-29T00:00:00.000Z");
    }
}
