//! Checks that a binary is a component of world `gantry:step/step` built for
//! a contract version this host speaks, before anything is instantiated.

use wasmtime::component::Component;
use wasmtime::Engine;

/// The contract version this host implements: the version of the WIT package it is built from.
pub const CONTRACT_VERSION: &str = package_version(include_str!("../../wit/step.wit"));

/// The version in a WIT file's `package gantry:step@VERSION;` line, at compile time.
const fn package_version(wit: &str) -> &str {
    const LINE: &[u8] = b"package gantry:step@";
    let bytes = wit.as_bytes();
    let start = at(bytes, LINE, 0) + LINE.len();
    let (head, _) = bytes.split_at(at(bytes, b";", start));
    match std::str::from_utf8(head.split_at(start).1) {
        Ok(version) => version,
        Err(_) => panic!("the WIT package version is not UTF-8"),
    }
}

/// Where `needle` first occurs in `hay` from `from`, at compile time.
const fn at(hay: &[u8], needle: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let mut j = 0;
        while j < needle.len() && hay[i + j] == needle[j] {
            j += 1;
        }
        if j == needle.len() {
            return i;
        }
        i += 1;
    }
    panic!("not found in the WIT file")
}

const PLUGIN_EXPORT: &str = "gantry:step/plugin";
const HOST_IMPORT: &str = "gantry:step/host";

/// What a component importing `interface`, which this host does not link, should use instead, or
/// where the interface comes from; `units` are the capabilities the host registers.
pub fn instead_of(interface: &str, units: &[&str]) -> String {
    let (package, _) = interface.split_once('/').unwrap_or((interface, ""));
    match package {
        "wasi:http" => "the sandbox does not provide: a step sends HTTP through the host, under its `network:` grant \
             (the SDK's `ctx.http()`); a JavaScript component built with componentize-js needs its `http` and \
             `fetch-event` features disabled"
            .into(),
        p if p.starts_with("wasi:") => "the sandbox does not provide: it offers WASI 0.2's cli, clocks, filesystem \
             (granted directories only), io, random and sockets (no connection allowed); everything else goes through \
             the host's capabilities"
            .into(),
        "gantry:step" => format!(
            "this host does not provide in that shape: it speaks gantry:step@{CONTRACT_VERSION}; rebuild the plugin with a matching gantry-sdk"
        ),
        _ => format!(
            "this host does not provide: it comes from a host that registers that capability (an embedder's own), \
             or from another plugin host; this one links WASI, gantry:step@{CONTRACT_VERSION} and the capabilities {}",
            units.join(", ")
        ),
    }
}

/// What kind of WebAssembly binary some bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A component (the component model's binary format).
    Component,
    /// A core module, e.g. a `cdylib` not yet componentized.
    CoreModule,
    /// Not WebAssembly.
    Other,
}

/// Tells a component from a core module from anything else by the header.
pub fn binary_kind(bytes: &[u8]) -> BinaryKind {
    if wasmparser::Parser::is_component(bytes) {
        BinaryKind::Component
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        BinaryKind::CoreModule
    } else {
        BinaryKind::Other
    }
}

/// Why a component is not a step this host can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// It exports no `gantry:step/plugin` interface; carries what it exports.
    NotAStep(Vec<String>),
    /// It is a step for another contract version.
    Version(String),
}

/// Whether two `0.x.y`/`x.y.z` versions are semver-compatible.
fn compatible(found: &str) -> bool {
    let major_minor = |v: &str| {
        let mut parts = v.split('.');
        let major = parts.next().unwrap_or_default().to_string();
        let minor = parts.next().unwrap_or_default().to_string();
        if major == "0" {
            (major, minor)
        } else {
            (major, String::new())
        }
    };
    major_minor(found) == major_minor(CONTRACT_VERSION)
}

fn version_of<'a>(name: &'a str, interface: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(interface)?;
    Some(rest.strip_prefix('@').unwrap_or(""))
}

/// Checks the component's exports and imports against the contract.
pub fn check(engine: &Engine, component: &Component) -> Result<(), Mismatch> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
    let versions = exports
        .iter()
        .filter_map(|n| version_of(n, PLUGIN_EXPORT))
        .chain(imports.iter().filter_map(|n| version_of(n, HOST_IMPORT)));
    for version in versions {
        if !compatible(version) {
            let shown = if version.is_empty() { "an unversioned contract" } else { version };
            return Err(Mismatch::Version(shown.to_string()));
        }
    }
    if !exports.iter().any(|n| n.starts_with(PLUGIN_EXPORT)) {
        return Err(Mismatch::NotAStep(exports));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_the_wit_package_version() {
        let wit = include_str!("../../wit/step.wit");
        assert!(wit.contains(&format!("\npackage gantry:step@{CONTRACT_VERSION};")), "{CONTRACT_VERSION}");
    }

    #[test]
    fn versions_compare_by_semver() {
        assert!(compatible("0.3.0"), "0.3.0 plugins import a subset of 0.3.4's host");
        assert!(compatible("0.3.1"), "0.3.1 plugins import no sql");
        assert!(compatible("0.3.2"), "0.3.2 plugins import no tls or dns");
        assert!(compatible("0.3.3"), "0.3.3 plugins export no preflight");
        assert!(compatible("0.3.4"));
        assert!(compatible("0.3.7"));
        assert!(!compatible("0.1.0"), "0.1 plugins lack the checkpoint import's contract");
        assert!(!compatible("0.2.0"), "0.2 plugins report failures as a retryable flag");
        assert!(!compatible("0.4.0"));
        assert!(!compatible("1.1.0"));
        assert!(!compatible(""));
    }

    #[test]
    fn headers_tell_binaries_apart() {
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0"), BinaryKind::CoreModule);
        assert_eq!(binary_kind(b"\0asm\x0d\0\x01\0"), BinaryKind::Component);
        assert_eq!(binary_kind(b"#!/bin/sh"), BinaryKind::Other);
    }
}
