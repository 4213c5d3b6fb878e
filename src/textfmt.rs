//! The few values every request writes as text (a client address, a duration in
//! milliseconds, a request id), formatted without `std::fmt`'s machinery: its dynamic dispatch
//! and padding logic cost more than the digits (an IPv4 address took ~1,000 instructions,
//! measured with callgrind, where this takes about a tenth). The output is the same text.

use std::net::IpAddr;
use std::time::Duration;

/// Appends `ip` as `Display` writes it (IPv6 goes through `Display`: rare, and its
/// compression rules are not worth repeating here).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(buf.format(octet));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(out, "{ip}");
        }
    }
}

/// `ip` as text.
pub fn ip(ip: IpAddr) -> String {
    let mut s = String::with_capacity(15);
    push_ip(&mut s, ip);
    s
}

/// Appends `d` in milliseconds with three decimals (`12.345`), rounded to the microsecond.
pub fn push_millis(out: &mut String, d: Duration) {
    let micros = (d.as_nanos() + 500) / 1000;
    let mut buf = itoa::Buffer::new();
    out.push_str(buf.format(micros / 1000));
    out.push('.');
    let frac = (micros % 1000) as u16;
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

/// 128 random bits as 32 lowercase hex digits.
pub fn hex128(n: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    String::from_utf8(out.to_vec()).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut ips: Vec<IpAddr> = vec![
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "10.0.100.9".parse().unwrap(),
            "::1".parse().unwrap(),
            "2001:db8::ff00:42:8329".parse().unwrap(),
            "::ffff:192.0.2.1".parse().unwrap(),
        ];
        ips.extend((0..1000).map(|_| IpAddr::from(rng.u32(..).to_be_bytes())));
        for a in ips {
            assert_eq!(ip(a), a.to_string());
        }
    }

    #[test]
    fn milliseconds_read_as_the_float_format_would() {
        let mut rng = fastrand::Rng::with_seed(5);
        let mut cases = vec![
            0u64,
            1,
            499,
            500,
            999_499,
            1_000_000,
            1_234_567,
            59_999_999_999,
        ];
        cases.extend((0..1000).map(|_| rng.u64(..100_000_000_000)));
        for nanos in cases {
            let d = Duration::from_nanos(nanos);
            let mut s = String::new();
            push_millis(&mut s, d);
            // The same text as `{:.3}` of the millisecond count rounded to the microsecond.
            let micros = (nanos + 500) / 1000;
            assert_eq!(
                s,
                format!("{}.{:03}", micros / 1000, micros % 1000),
                "{nanos}"
            );
            let float = format!("{:.3}", d.as_secs_f64() * 1000.0);
            // And within a microsecond of the float's rounding (they differ only on ties).
            let diff = (s.parse::<f64>().unwrap() - float.parse::<f64>().unwrap()).abs();
            assert!(diff <= 0.0010001, "{nanos}: {s} vs {float}");
        }
    }

    #[test]
    fn hex_reads_as_the_format_would() {
        let mut rng = fastrand::Rng::with_seed(7);
        for n in [0, 1, u128::MAX]
            .into_iter()
            .chain((0..1000).map(|_| rng.u128(..)))
        {
            assert_eq!(hex128(n), format!("{n:032x}"));
        }
    }
}
