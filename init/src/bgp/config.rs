//! Rendering `bird.conf` from the site: router id, AS 20144, one session per neighbour, the IMRS
//! export filter, and the four static protocols holding the announced prefixes.
//!
//! The output is deterministic (same site and options, same bytes), so a re-render can be compared
//! with the running file to decide whether BIRD needs `configure`.

use std::fmt::Write as _;

use imrs_config::imrs::{IMRS_ASN, IMRS_PREFIXES, PrefixKind, imrs_prefix};
use imrs_config::site::{Neighbor, Site};
use ipnet::IpNet;

use super::BgpError;

/// Static protocol holding the covering IPv4 prefix (199.7.82.0/23).
pub const COVER4: &str = "imrs_cover4";
/// Static protocol holding the covering IPv6 prefix (2001:500:9e::/47).
pub const COVER6: &str = "imrs_cover6";
/// Static protocol holding the specific IPv4 prefix (199.7.83.0/24).
pub const SPEC4: &str = "imrs_spec4";
/// Static protocol holding the specific IPv6 prefixes (2001:500:3::/48, 2001:500:9f::/48).
pub const SPEC6: &str = "imrs_spec6";

/// Well-known NO_EXPORT community (RFC 1997), as BIRD writes it.
const NO_EXPORT: &str = "(65535, 65281)";

/// Knobs of the generated config that are not site data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdOptions {
    /// Start with the static protocols enabled. `false` (the default) keeps every prefix
    /// withdrawn until health gating enables them with `birdc enable`.
    pub announce_at_start: bool,
    /// BGP hold time in seconds (`None`: BIRD's default, 240 s).
    pub hold_time: Option<u16>,
    /// Seconds between connection attempts to a neighbour that is down.
    pub connect_retry: u16,
}

impl Default for BirdOptions {
    fn default() -> Self {
        BirdOptions {
            announce_at_start: false,
            hold_time: None,
            connect_retry: 10,
        }
    }
}

/// The static protocols of a given kind, in the order they are rendered.
pub fn static_protocols(kind: PrefixKind) -> [&'static str; 2] {
    match kind {
        PrefixKind::Covering => [COVER4, COVER6],
        PrefixKind::Specific => [SPEC4, SPEC6],
    }
}

fn static_protocol_for(p: &IpNet, kind: PrefixKind) -> &'static str {
    match (kind, p) {
        (PrefixKind::Covering, IpNet::V4(_)) => COVER4,
        (PrefixKind::Covering, IpNet::V6(_)) => COVER6,
        (PrefixKind::Specific, IpNet::V4(_)) => SPEC4,
        (PrefixKind::Specific, IpNet::V6(_)) => SPEC6,
    }
}

/// The BIRD protocol name of a neighbour's session (prefixed so that no site name can collide
/// with a BIRD keyword or one of the static protocols).
pub fn session_name(n: &Neighbor) -> String {
    format!("peer_{}", n.name)
}

fn refuse(field: String, value: impl ToString, rule: &'static str) -> BgpError {
    BgpError::Refused {
        field,
        value: value.to_string(),
        rule,
    }
}

fn check_neighbor(i: usize, n: &Neighbor) -> Result<(), BgpError> {
    let key = |f: &str| format!("bgp.neighbors[{i}].{f}");
    let name_ok = !n.name.is_empty()
        && n.name.len() <= 32
        && n.name.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(refuse(key("name"), &n.name, "letters, digits, '_'"));
    }
    if n.asn == IMRS_ASN || n.asn == 0 {
        return Err(refuse(key("asn"), n.asn, "an eBGP neighbour AS"));
    }
    if let Some(pw) = &n.password
        && (pw.is_empty() || pw.chars().any(|c| c == '"' || c == '\\' || c.is_control()))
    {
        return Err(refuse(
            key("password"),
            "(hidden)",
            "non-empty, no quotes, backslashes or control characters",
        ));
    }
    if let Some(h) = n.multihop
        && !(2..=64).contains(&h)
    {
        return Err(refuse(key("multihop"), h, "2..=64"));
    }
    if let Some(i) = &n.interface
        && (i.is_empty()
            || !i
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)))
    {
        return Err(refuse(key("interface"), i, "an interface name"));
    }
    Ok(())
}

/// The filter function every export filter calls: true only for the five IMRS prefixes, exactly
/// (a BIRD prefix set without `+`/`{}` matches the listed prefixes only, not longer ones).
fn render_imrs_only(out: &mut String) {
    let set = |v4: bool| {
        IMRS_PREFIXES
            .iter()
            .map(|p| p.prefix)
            .filter(|p| matches!(p, IpNet::V4(_)) == v4)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "# True only for exactly the five IMRS prefixes (docs/facts.md, Routing), whatever the\n\
         # static protocols hold: defence in depth behind the site validation.\n\
         function imrs_only() {{\n  \
           if source != RTS_STATIC then return false;\n  \
           if net.type = NET_IP4 then return net ~ [ {} ];\n  \
           if net.type = NET_IP6 then return net ~ [ {} ];\n  \
           return false;\n\
         }}\n",
        set(true),
        set(false)
    );
}

fn render_statics(out: &mut String, announced: &[IpNet], opts: &BirdOptions) {
    for (kind, names) in [
        (PrefixKind::Covering, static_protocols(PrefixKind::Covering)),
        (PrefixKind::Specific, static_protocols(PrefixKind::Specific)),
    ] {
        for name in names {
            let v4 = name.ends_with('4');
            let _ = writeln!(out, "protocol static {name} {{");
            let _ = writeln!(out, "  {};", if v4 { "ipv4" } else { "ipv6" });
            if !opts.announce_at_start {
                let _ = writeln!(out, "  disabled yes;");
            }
            for p in announced {
                let Some(imrs) = imrs_prefix(p) else { continue };
                if imrs.kind == kind && static_protocol_for(p, kind) == name {
                    let _ = writeln!(out, "  route {p} blackhole;  # {}", imrs.note);
                }
            }
            let _ = writeln!(out, "}}\n");
        }
    }
}

fn render_session(out: &mut String, n: &Neighbor, opts: &BirdOptions) {
    let v4 = n.address.is_ipv4();
    let _ = writeln!(out, "protocol bgp {} {{", session_name(n));
    let _ = writeln!(out, "  description \"{} AS{}\";", n.name, n.asn);
    let _ = writeln!(out, "  local as {IMRS_ASN};");
    let _ = writeln!(out, "  neighbor {} as {};", n.address, n.asn);
    match n.multihop {
        Some(h) => {
            let _ = writeln!(out, "  multihop {h};");
        }
        None => {
            let _ = writeln!(out, "  direct;");
        }
    }
    // A link-local neighbour exists on one link only: BIRD needs to be told which.
    if let Some(ifc) = &n.interface {
        let _ = writeln!(out, "  interface \"{ifc}\";");
    }
    if let Some(pw) = &n.password {
        let _ = writeln!(out, "  password \"{pw}\";");
    }
    if let Some(h) = opts.hold_time {
        let _ = writeln!(out, "  hold time {h};");
    }
    let _ = writeln!(out, "  connect delay time 0;");
    let _ = writeln!(out, "  connect retry time {};", opts.connect_retry);
    // After an error (a NOTIFICATION from the host's router), retry within seconds, not minutes.
    let _ = writeln!(out, "  error wait time {}, 60;", opts.connect_retry.max(1));
    let _ = writeln!(out, "  {} {{", if v4 { "ipv4" } else { "ipv6" });
    let _ = writeln!(out, "    import none;");
    let _ = writeln!(out, "    export filter {{");
    let _ = writeln!(out, "      if !imrs_only() then reject;");
    for _ in 0..n.prepend {
        let _ = writeln!(out, "      bgp_path.prepend({IMRS_ASN});");
    }
    if n.community {
        if n.asn <= u32::from(u16::MAX) {
            let _ = writeln!(out, "      bgp_community.add(({IMRS_ASN}, {}));", n.asn);
        } else {
            // A 4-byte AS does not fit a standard community: RFC 8092 large community instead.
            let _ = writeln!(
                out,
                "      bgp_large_community.add(({IMRS_ASN}, {}, 0));",
                n.asn
            );
        }
    }
    if n.no_export {
        let _ = writeln!(out, "      bgp_community.add({NO_EXPORT});");
    }
    let _ = writeln!(out, "      accept;\n    }};\n  }};\n}}\n");
}

/// Renders `bird.conf` for a site.
///
/// Refuses (instead of silently dropping) an announce list with a non-IMRS prefix, and values
/// that could break out of BIRD's syntax, even though the site validation checks them already.
pub fn render(site: &Site, opts: &BirdOptions) -> Result<String, BgpError> {
    let announced = site.announced();
    for (i, p) in announced.iter().enumerate() {
        if imrs_prefix(p).is_none() {
            return Err(refuse(
                format!("bgp.announce[{i}]"),
                p,
                "only the five IMRS prefixes may be announced",
            ));
        }
    }
    for (i, n) in site.bgp.neighbors.iter().enumerate() {
        check_neighbor(i, n)?;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by imrs-init from the site config of {} ({}). Do not edit.\n",
        site.instance, site.site_id
    );
    let _ = writeln!(out, "router id {};", site.bgp.router_id);
    let _ = writeln!(
        out,
        "log stderr {{ info, remote, warning, error, auth, fatal, bug }};\n"
    );
    let _ = writeln!(out, "protocol device {{\n  scan time 10;\n}}\n");
    render_imrs_only(&mut out);
    render_statics(&mut out, &announced, opts);
    for n in &site.bgp.neighbors {
        render_session(&mut out, n, opts);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let text = include_str!("../../../images/sites/lab.toml");
        imrs_config::site::parse(std::path::Path::new("lab.toml"), text).unwrap()
    }

    #[test]
    fn renders_every_prefix_in_its_static_protocol_disabled() {
        let conf = render(&site(), &BirdOptions::default()).unwrap();
        for (proto, prefixes) in [
            (COVER4, &["199.7.82.0/23"][..]),
            (COVER6, &["2001:500:9e::/47"][..]),
            (SPEC4, &["199.7.83.0/24"][..]),
            (SPEC6, &["2001:500:3::/48", "2001:500:9f::/48"][..]),
        ] {
            let start = conf.find(&format!("protocol static {proto} {{")).unwrap();
            let block = conf.get(start..).unwrap().split("}\n").next().unwrap();
            assert!(block.contains("disabled yes;"), "{block}");
            for p in prefixes {
                assert!(block.contains(&format!("route {p} blackhole;")), "{block}");
            }
            assert_eq!(block.matches("route ").count(), prefixes.len(), "{block}");
        }
        assert!(conf.contains("local as 20144;"));
        assert!(conf.contains("neighbor 192.0.2.1 as 64512;"));
        assert!(conf.contains("neighbor 2001:db8:1::1 as 64512;"));
        assert!(conf.contains("router id 192.0.2.10;"));
        assert_eq!(conf.matches("import none;").count(), 2);
        assert_eq!(conf.matches("if !imrs_only() then reject;").count(), 2);
    }

    #[test]
    fn neighbour_policy_options() {
        let mut s = site();
        let n = &mut s.bgp.neighbors[0];
        n.password = Some("s3cret".into());
        n.multihop = Some(3);
        n.community = true;
        n.no_export = true;
        n.prepend = 2;
        s.bgp.neighbors[1].asn = 4_200_000_000;
        s.bgp.neighbors[1].community = true;
        let conf = render(&s, &BirdOptions::default()).unwrap();
        assert!(conf.contains("password \"s3cret\";"));
        assert!(conf.contains("multihop 3;"));
        assert!(conf.contains("bgp_community.add((20144, 64512));"));
        assert!(conf.contains("bgp_community.add((65535, 65281));"));
        assert_eq!(conf.matches("bgp_path.prepend(20144);").count(), 2);
        assert!(conf.contains("bgp_large_community.add((20144, 4200000000, 0));"));
        assert_eq!(conf.matches("direct;").count(), 1);
    }

    #[test]
    fn refuses_what_validation_would_refuse() {
        type Edit = Box<dyn Fn(&mut Site)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            (
                "foreign prefix",
                Box::new(|s| s.bgp.announce = Some(vec!["192.0.2.0/24".parse().unwrap()])),
                "bgp.announce[0]",
            ),
            (
                "longer IMRS prefix",
                Box::new(|s| s.bgp.announce = Some(vec!["199.7.83.0/25".parse().unwrap()])),
                "bgp.announce[0]",
            ),
            (
                "quote in password",
                Box::new(|s| s.bgp.neighbors[1].password = Some("a\";}".into())),
                "bgp.neighbors[1].password",
            ),
            (
                "AS 20144 peer",
                Box::new(|s| s.bgp.neighbors[0].asn = IMRS_ASN),
                "bgp.neighbors[0].asn",
            ),
            (
                "name with a brace",
                Box::new(|s| s.bgp.neighbors[0].name = "x{".into()),
                "bgp.neighbors[0].name",
            ),
        ];
        for (what, edit, key) in cases {
            let mut s = site();
            edit(&mut s);
            match render(&s, &BirdOptions::default()) {
                Err(BgpError::Refused { field, .. }) => assert_eq!(field, key, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn link_local_neighbour_names_its_interface_and_bird_accepts_it() {
        let text = include_str!("../../../images/sites/lab.toml").replace(
            "address = \"2001:db8:1::1\"",
            "address = \"fe80::1\"\ninterface = \"eth0\"",
        );
        let s = imrs_config::site::parse(std::path::Path::new("lab.toml"), &text).unwrap();
        let conf = render(&s, &BirdOptions::default()).unwrap();
        assert!(
            conf.contains("  neighbor fe80::1 as 64512;\n  direct;\n  interface \"eth0\";\n"),
            "{conf}"
        );
        let bird = std::path::Path::new(super::super::daemon::BIRD_BIN);
        if !bird.exists() {
            eprintln!("skip: {} not installed", bird.display());
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs bird"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.conf");
        std::fs::write(&path, &conf).unwrap();
        // The reaper's tests in this process may take bird's exit status (waitpid(-1)): a lost
        // status is retried, a verdict is not.
        let check = || {
            let mut r = super::super::daemon::check_config(bird, &path);
            for _ in 0..5 {
                if !matches!(r, Err(BgpError::CheckSpawn { .. })) {
                    break;
                }
                r = super::super::daemon::check_config(bird, &path);
            }
            r
        };
        check().unwrap();
        // Without the interface line BIRD refuses it, which is why the site requires one.
        std::fs::write(&path, conf.replace("  interface \"eth0\";\n", "")).unwrap();
        let e = check().unwrap_err().to_string();
        assert!(e.contains("Link-local"), "{e}");
    }

    #[test]
    fn announce_subset_and_enabled_start() {
        let mut s = site();
        s.bgp.announce = Some(vec!["199.7.82.0/23".parse().unwrap()]);
        let opts = BirdOptions {
            announce_at_start: true,
            ..BirdOptions::default()
        };
        let conf = render(&s, &opts).unwrap();
        assert_eq!(conf.matches("route ").count(), 1);
        assert!(!conf.contains("disabled yes;"));
        assert_eq!(render(&s, &opts).unwrap(), conf, "deterministic");
    }
}
