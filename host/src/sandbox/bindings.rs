//! Host-side bindings generated from the WIT contract in `sdk/wit`: world `sandbox`, what the
//! sandbox links itself (capability units generate and link their own interfaces).

wasmtime::component::bindgen!({
    path: "wit",
    world: "sandbox",
    imports: { default: async },
    exports: { default: async },
    with: {
        "gantry:step/sql.connection": super::sql::Connection,
        "gantry:step/sql.transaction": super::sql::Transaction,
    },
});
