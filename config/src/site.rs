//! Site configs (`images/sites/*.toml`): one per appliance, written by ICANN DNS Engineering for the
//! host organisation's network. Signed at provisioning; the init refuses an unsigned one.
//!
//! [`validate`] is the one set of rules for a site config: `imrs-build site check`, `site sign`
//! and the appliance's init all run it, so what the CLI accepts is what the box accepts. It is
//! where routing safety starts (nothing but the five IMRS prefixes can be requested for
//! announcement, peers cannot claim AS 20144, every address has the right family) and it refuses
//! what the daemons would refuse at boot or the box must never do (see `site/validate.rs`).
//!
//! A config is bound to one appliance or to `any` ([`DeviceBinding`]) and carries a
//! [`Site::sequence`]; [`admit`] is the init's decision whether to apply it.
//!
//! - `validate.rs`: the rules; `addr.rs`: address classes; `phone_home.rs`: URL and CA checks;
//!   `device.rs`: device binding, sequence and [`admit`].

mod addr;
mod device;
pub mod host;
mod phone_home;
mod validate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, parse_toml, read};
use crate::fsutil::limits;
use crate::imrs::{IMRS_PREFIXES, LROOT_V4, LROOT_V6};

pub use device::{DeviceBinding, DeviceIdentity, SiteRefusal, admit};
pub use host::Host;
pub use validate::validate;

/// The site schema version this build understands. Version 2 added `device`, `sequence` and
/// `[dns]`.
pub const SITE_VERSION: u32 = 2;

/// A site config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Schema version; must be [`SITE_VERSION`].
    pub version: u32,
    /// Instance name, a DNS name (answered in NSID, `hostname.bind`, `id.server`).
    pub instance: String,
    /// Site identifier used in reports and the fleet list.
    pub site_id: String,
    /// The appliance this config is for: `serial:<disk serial>`, `key:<device key id>` or `any`.
    pub device: DeviceBinding,
    /// Increases with every new config for the device; the appliance refuses a config older
    /// than the last it applied (an equal one is the same config again, e.g. after a reboot).
    pub sequence: u64,
    /// A lab site: may use documentation-range service addresses; shown on the console and in
    /// every report.
    #[serde(default)]
    pub lab: bool,
    /// Service addresses (default: the L-root addresses).
    #[serde(default)]
    pub service: Service,
    /// Network interfaces.
    pub interfaces: Vec<Interface>,
    /// BGP.
    pub bgp: Bgp,
    /// Time.
    #[serde(default)]
    pub ntp: Ntp,
    /// Phone home.
    pub phone_home: PhoneHome,
    /// Root zone sources (default: ICANN's transfer servers).
    #[serde(default)]
    pub zone: ZoneSources,
    /// DNS service options (default: none set).
    #[serde(default)]
    pub dns: DnsOptions,
    /// A/B slots: how long an updated slot has to become healthy.
    #[serde(default)]
    pub slots: Slots,
    /// Remote management: who may send this box commands.
    #[serde(default)]
    pub fleet: Fleet,
    /// RSSAC002 collection from the DNS daemon's dnstap; absent: the box counts nothing.
    #[serde(default)]
    pub telemetry: Option<Telemetry>,
    /// The host organisation's contacts, for the receiver's notices (default: none).
    #[serde(default)]
    pub host: Host,
}

/// RSSAC002 collection ([`crate::rssac002`]).
///
/// Client addresses never leave the box: unique sources travel as keyed hashes (and past 4,096
/// of them, as a HyperLogLog sketch of those hashes). The key is the same on every box of the
/// fleet, so the receiver can count a source seen by two boxes once; without the key an IPv4
/// address cannot be recovered from its hash by trying all 2^32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The fleet's source-hashing key: 64 hex digits (32 secret bytes).
    pub source_key: String,
}

impl Telemetry {
    /// The source key's 32 bytes (`None` unless 64 hex digits: [`validate`] refuses that).
    pub fn key_bytes(&self) -> Option<[u8; 32]> {
        let s = self.source_key.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(out)
    }
}

/// Remote management.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// The operations public keys (Ed25519, SPKI PEM) whose signed commands the box runs
    /// ([`crate::command::admit`]); none (the default): the box runs no command. At most 4
    /// (a key being rolled over beside its successor, and spares).
    #[serde(default)]
    pub ops_public_keys: Vec<String>,
}

impl Fleet {
    /// The operations keys, parsed (the site was validated: every one parses).
    pub fn ops_keys(&self) -> Vec<ed25519_dalek::VerifyingKey> {
        self.ops_public_keys
            .iter()
            .filter_map(|k| crate::keys::parse_public(k, Path::new("site")).ok())
            .collect()
    }
}

/// Addresses the DNS service answers on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// IPv4 service address.
    pub ipv4: Ipv4Addr,
    /// IPv6 service address.
    pub ipv6: Ipv6Addr,
}

impl Default for Service {
    fn default() -> Self {
        Service {
            ipv4: LROOT_V4,
            ipv6: LROOT_V6,
        }
    }
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Kernel name (`eth0`, `enp1s0`).
    pub name: String,
    /// Optional MAC address to match instead of relying on names.
    #[serde(default)]
    pub mac: Option<String>,
    /// Addresses with prefix length.
    pub addresses: Vec<IpNet>,
    /// IPv4 default gateway.
    #[serde(default)]
    pub gateway4: Option<Ipv4Addr>,
    /// IPv6 default gateway.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// BGP settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bgp {
    /// Router id (an IPv4 address of the appliance).
    pub router_id: Ipv4Addr,
    /// Prefixes to announce; default all five IMRS prefixes; only IMRS prefixes are accepted.
    #[serde(default)]
    pub announce: Option<Vec<IpNet>>,
    /// Neighbours (the host organisation's routers).
    pub neighbors: Vec<Neighbor>,
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbor {
    /// Name, used for the BIRD protocol name.
    pub name: String,
    /// Neighbour address.
    pub address: IpAddr,
    /// The interface the neighbour is on (one of `interfaces[].name`); required for an IPv6
    /// link-local neighbour (`fe80::/10`), which exists only on one link.
    #[serde(default)]
    pub interface: Option<String>,
    /// Neighbour AS.
    pub asn: u32,
    /// TCP-MD5 password.
    #[serde(default)]
    pub password: Option<String>,
    /// eBGP multihop TTL (neighbour not on a connected subnet).
    #[serde(default)]
    pub multihop: Option<u8>,
    /// Tag announcements with community `20144:<peer asn>`.
    #[serde(default)]
    pub community: bool,
    /// Tag announcements NO_EXPORT.
    #[serde(default)]
    pub no_export: bool,
    /// Prepend AS 20144 this many extra times.
    #[serde(default)]
    pub prepend: u8,
}

/// Time sources: NTS servers (authenticated, preferred), or plain NTP servers, or (labs) the
/// RTC. NTS and plain servers are never mixed: an unauthenticated source next to NTS ones would
/// let an on-path attacker move the clock the DNSSEC checks read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ntp {
    /// Plain NTP servers (addresses; the appliance resolves no names before it has a clock).
    #[serde(default)]
    pub servers: Vec<IpAddr>,
    /// NTS servers (RFC 8915): the name their certificate carries and where they are.
    #[serde(default)]
    pub nts: Vec<NtsServer>,
    /// PEM CA certificate(s) the NTS servers' certificates must chain to (required with `nts`;
    /// no system trust store).
    #[serde(default)]
    pub nts_ca_pem: String,
    /// Trust the RTC instead (labs only; shown on the console and recorded).
    #[serde(default)]
    pub trust_rtc: bool,
}

/// One NTS server. The box has no resolver: the init maps `name` to `address` in `/etc/hosts`
/// for chronyd, which checks the server's certificate against `name` (so `name` may also be
/// an address, for a certificate with that IP address in its subject alternative names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtsServer {
    /// The DNS name in the server's certificate (or its address).
    pub name: String,
    /// Its address.
    pub address: IpAddr,
    /// Its NTS key-establishment port (TCP; default 4460).
    #[serde(default = "default_nts_ke_port")]
    pub port: u16,
}

/// NTS-KE's port (RFC 8915).
pub const NTS_KE_PORT: u16 = 4460;

fn default_nts_ke_port() -> u16 {
    NTS_KE_PORT
}

/// Where the installation report goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneHome {
    /// HTTPS URL receiving reports.
    pub url: String,
    /// PEM CA certificate(s) the receiver's certificate must chain to (no system trust store).
    pub ca_pem: String,
    /// Seconds between heartbeats once the box serves (10 to 86400; default 300, jittered by up
    /// to a tenth either way).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
}

/// The default [`PhoneHome::heartbeat_s`]: 5 minutes.
pub const DEFAULT_HEARTBEAT_S: u64 = 300;

fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_S
}

/// Root zone transfer sources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSources {
    /// Transfer servers (`ADDR` or `[V6]:PORT` / `V4:PORT`); empty means ICANN's.
    #[serde(default)]
    pub servers: Vec<String>,
}

/// DNS service options.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsOptions {
    /// Response rate limiting; absent (the default): off.
    #[serde(default)]
    pub rrl: Option<Rrl>,
}

/// The disk slots' trial rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// Seconds a slot on trial (an update being tried with a boot counter) has from boot to
    /// healthy (zone verified, DNS answering, BGP established and announcing) before the box
    /// reboots and systemd-boot tries it again or goes back to the other slot (60 to 86400;
    /// default 900).
    #[serde(default = "default_health_deadline")]
    pub health_deadline_s: u64,
}

impl Default for Slots {
    fn default() -> Slots {
        Slots {
            health_deadline_s: default_health_deadline(),
        }
    }
}

/// The default [`Slots::health_deadline_s`]: 15 minutes, several zone transfers' worth of
/// retries on a slow link.
pub const DEFAULT_HEALTH_DEADLINE_S: u64 = 900;

fn default_health_deadline() -> u64 {
    DEFAULT_HEALTH_DEADLINE_S
}

/// Response rate limiting (RRL): how many responses per second one client netblock gets.
///
/// NSD 4.6 applies all four settings (`rrl-ratelimit`, `rrl-slip`, `rrl-ipv4-prefix-length`,
/// `rrl-ipv6-prefix-length`); Knot DNS 3.2's `mod-rrl` takes the rate and slip and groups
/// clients by /24 (IPv4) and /56 (IPv6) itself, which are the defaults here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rrl {
    /// Responses per second per client netblock (1 to 1,000,000).
    pub responses_per_second: u32,
    /// Every `slip`-th limited response is sent truncated, so a real client retries over TCP;
    /// 0 drops them all (0 to 100; default 2).
    #[serde(default = "default_slip")]
    pub slip: u32,
    /// IPv4 clients are grouped by this prefix length (8 to 32; default 24).
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix_length: u8,
    /// IPv6 clients are grouped by this prefix length (16 to 64; default 56).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix_length: u8,
}

fn default_slip() -> u32 {
    2
}

fn default_ipv4_prefix() -> u8 {
    24
}

fn default_ipv6_prefix() -> u8 {
    56
}

impl Site {
    /// The two service addresses, IPv4 first.
    pub fn service_addresses(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.service.ipv4), IpAddr::V6(self.service.ipv6)]
    }

    /// Every address the DNS daemon answers on: the service addresses, then each management
    /// address once, in the site's order.
    pub fn dns_addresses(&self) -> Vec<IpAddr> {
        let mut out = self.service_addresses().to_vec();
        for a in self.interfaces.iter().flat_map(|i| &i.addresses) {
            if !out.contains(&a.addr()) {
                out.push(a.addr());
            }
        }
        out
    }

    /// Prefixes this site announces (validated to be IMRS prefixes).
    pub fn announced(&self) -> Vec<IpNet> {
        match &self.bgp.announce {
            Some(list) => list.clone(),
            None => IMRS_PREFIXES.iter().map(|p| p.prefix).collect(),
        }
    }
}

/// Parses and validates a site config from text; `path` names it in errors.
///
/// The `version` is checked first, so a config written for another schema version says so
/// rather than naming the first field that changed.
pub fn parse(path: &Path, text: &str) -> Result<Site, ConfigError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    if let Ok(v) = toml::from_str::<VersionOnly>(text)
        && v.version != SITE_VERSION
    {
        return Err(validate::wrong_version(path, v.version));
    }
    let site: Site = parse_toml(path, text)?;
    validate(path, &site)?;
    Ok(site)
}

/// Loads and validates a site config file (at most [`limits::SITE`] bytes).
pub fn load(path: &Path) -> Result<Site, ConfigError> {
    parse(path, &read(path, limits::SITE, "site config")?)
}

/// Parses `ADDR`, `V4:PORT` or `[V6]:PORT` (port 53 by default).
pub fn parse_server(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests;
