//! Host-side bindings generated from the WIT contract in `sdk/wit`.

wasmtime::component::bindgen!({
    path: "wit",
    world: "step",
    imports: { default: async },
    exports: { default: async },
    with: {
        "gantry:step/sql.connection": super::sql::Connection,
        "gantry:step/sql.transaction": super::sql::Transaction,
    },
});
