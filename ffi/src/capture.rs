//! Capturing named intermediate tensors through the context's eval callback (`cb_eval`).
//!
//! ggml's scheduler calls the callback twice per graph node: first with `ask = true` ("do you
//! want this node?"), then, for the nodes we said yes to, with `ask = false` once its data is
//! computed. Nodes we want split the graph there; nodes we do not want cost nothing, and when
//! no capture is active every node is declined so the graph runs in one piece as without a
//! callback. The CPU backend keeps every tensor in host memory, so we read `data` directly.
//!
//! A name may be reported more than once in one evaluation (for example a tensor renamed after
//! an in-place op): every occurrence is kept, in evaluation order.

use std::ffi::{c_void, CStr};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::sys;

/// Which nodes to capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptureFilter {
    /// Every node of the graph.
    All,
    /// Nodes whose name is one of these (e.g. `attn_norm-0`, `Qcur-0`, `l_out-3`, `result_norm`).
    Names(Vec<String>),
}

impl CaptureFilter {
    fn wants(&self, name: &str) -> bool {
        match self {
            CaptureFilter::All => true,
            CaptureFilter::Names(names) => names.iter().any(|n| n == name),
        }
    }
}

/// One captured node, converted to f32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedTensor {
    /// The node's name as the graph builder set it (`name-layer`).
    pub name: String,
    /// Its ggml type id before conversion (0 F32, 1 F16, ...).
    pub ggml_type: u32,
    /// ggml's op that produced it (the `ggml_op` enum value).
    pub op: u32,
    /// ggml dims, `ne[0]` fastest (row length).
    pub ne: [i64; 4],
    /// Values in logical order (`ne[0]` fastest), whatever the strides in memory were. Not part
    /// of the serde form: the worker sends them as raw f32 after the JSON header.
    #[serde(skip)]
    pub data: Vec<f32>,
}

/// State shared with the callback through `cb_eval_user_data`; boxed by the context so its
/// address is stable for the context's life.
#[derive(Default)]
pub(crate) struct CaptureState {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    filter: Option<CaptureFilter>,
    captured: Vec<CapturedTensor>,
    errors: Vec<String>,
    /// Type traits lookup, set once by the context (function pointer from the loaded library).
    traits: Option<unsafe extern "C" fn(sys::ggml_type) -> *const sys::ggml_type_traits>,
}

impl CaptureState {
    pub(crate) fn new(
        traits: unsafe extern "C" fn(sys::ggml_type) -> *const sys::ggml_type_traits,
    ) -> CaptureState {
        let s = CaptureState::default();
        if let Ok(mut g) = s.inner.lock() {
            g.traits = Some(traits);
        }
        s
    }

    pub(crate) fn begin(&self, filter: CaptureFilter) {
        if let Ok(mut g) = self.inner.lock() {
            g.filter = Some(filter);
            g.captured.clear();
            g.errors.clear();
        }
    }

    /// Stop capturing; return what was captured and any conversion errors.
    pub(crate) fn end(&self) -> (Vec<CapturedTensor>, Vec<String>) {
        match self.inner.lock() {
            Ok(mut g) => {
                g.filter = None;
                (std::mem::take(&mut g.captured), std::mem::take(&mut g.errors))
            }
            Err(_) => (Vec::new(), vec!["capture state poisoned".into()]),
        }
    }
}

/// The `ggml_backend_sched_eval_callback` given to the context.
pub(crate) unsafe extern "C" fn eval_callback(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user_data: *mut c_void,
) -> bool {
    if t.is_null() || user_data.is_null() {
        return !ask;
    }
    // SAFETY: user_data is the CaptureState boxed by the Context that registered this
    // callback; the context (and so the box) outlives every decode that can call us.
    let state = unsafe { &*(user_data as *const CaptureState) };
    // SAFETY: ggml passes a valid tensor for the duration of the call.
    let t = unsafe { &*t };
    // SAFETY: name is a fixed-size NUL-terminated array inside the tensor.
    let name = unsafe { CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy();
    let Ok(mut g) = state.inner.lock() else {
        return !ask;
    };
    let wanted = g.filter.as_ref().is_some_and(|f| f.wants(&name));
    if ask {
        return wanted;
    }
    if wanted {
        // SAFETY: with ask == false the node's data has been computed and lives in host memory
        // (CPU backend) at t.data with the strides t.nb, as ggml guarantees.
        match unsafe { to_f32(t, g.traits) } {
            Ok(data) => g.captured.push(CapturedTensor {
                name: name.into_owned(),
                ggml_type: t.type_,
                op: t.op,
                ne: t.ne,
                data,
            }),
            Err(e) => g.errors.push(format!("{name}: {e}")),
        }
    }
    // true = keep computing the graph.
    true
}

/// Copy a host tensor into f32s in logical order.
///
/// # Safety
/// `t.data` must point to host memory holding the tensor as its `ne`/`nb` describe.
unsafe fn to_f32(
    t: &sys::ggml_tensor,
    traits: Option<unsafe extern "C" fn(sys::ggml_type) -> *const sys::ggml_type_traits>,
) -> Result<Vec<f32>, String> {
    if t.data.is_null() {
        return Err("no data (not allocated)".into());
    }
    let [ne0, ne1, ne2, ne3] = t.ne.map(|n| n.max(0) as usize);
    let [nb0, nb1, nb2, nb3] = t.nb;
    let mut out = Vec::with_capacity(ne0 * ne1 * ne2 * ne3);
    let base = t.data as *const u8;
    let convert: Box<dyn Fn(*const u8) -> f32> = match t.type_ {
        sys::ggml_type_GGML_TYPE_F32 => Box::new(|p| {
            // SAFETY: p points at one f32 element of the tensor (caller's contract).
            unsafe { (p as *const f32).read_unaligned() }
        }),
        sys::ggml_type_GGML_TYPE_I32 => Box::new(|p| {
            // SAFETY: p points at one i32 element of the tensor (caller's contract).
            unsafe { (p as *const i32).read_unaligned() as f32 }
        }),
        ty => {
            let lookup = traits.ok_or("no type traits")?;
            // SAFETY: ggml_get_type_traits returns a pointer into a static table for valid types.
            let tr = unsafe { &*lookup(ty) };
            // Element-wise conversion needs one-element blocks (F16, BF16); block-quantized
            // intermediates do not occur on the CPU graph.
            if tr.blck_size != 1 || tr.to_float.is_none() || ty == sys::ggml_type_GGML_TYPE_I2_S {
                return Err(format!("cannot convert ggml type {ty} element-wise"));
            }
            let f = tr.to_float.ok_or("no to_float")?;
            Box::new(move |p| {
                let mut y = 0f32;
                // SAFETY: to_float reads one element at p and writes one f32.
                unsafe { f(p as *const c_void, &mut y, 1) };
                y
            })
        }
    };
    for i3 in 0..ne3 {
        for i2 in 0..ne2 {
            for i1 in 0..ne1 {
                for i0 in 0..ne0 {
                    let off = i0 * nb0 + i1 * nb1 + i2 * nb2 + i3 * nb3;
                    // SAFETY: off is within the tensor by its own ne/nb (caller's contract).
                    out.push(convert(unsafe { base.add(off) }));
                }
            }
        }
    }
    Ok(out)
}
