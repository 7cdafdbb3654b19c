//! Host-side bindings generated from the WIT contract in `sdk/wit`.

wasmtime::component::bindgen!({
    path: "wit",
    world: "step",
    imports: { default: async },
    exports: { default: async },
});
