//! In-process nftables through `libnftables.so.1` (the library behind the `nft` command).
//!
//! Loaded at run time so that PRaaS builds without the C headers and a node without nftables
//! gets a clear error instead of a binary that does not start. Running a command in-process
//! costs a fraction of a millisecond; spawning `nft` costs milliseconds (moby measured ~20 ms).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::{Mutex, MutexGuard, OnceLock};

use libloading::{Library, Symbol};

const LIBRARY: &str = "libnftables.so.1";
const NFT_CTX_DEFAULT: u32 = 0;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxInt = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxStr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// libnftables keeps global state (its parser and symbol tables): contexts used from several
/// threads at once were seen to corrupt a map element under load (1,000 namespaces synced by 4
/// threads). Every use of the library holds this lock.
static LIBRARY_LOCK: Mutex<()> = Mutex::new(());

/// The entry points we use, resolved once per process.
pub struct LibNftables {
    ctx_new: CtxNew,
    ctx_free: CtxFree,
    buffer_output: CtxInt,
    buffer_error: CtxInt,
    get_output: CtxStr,
    get_error: CtxStr,
    run_cmd: RunCmd,
    // Keeps the function pointers above valid.
    _lib: Library,
}

/// Why libnftables could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("cannot load {LIBRARY} (install the nftables package)")]
pub struct LoadError(#[source] libloading::Error);

impl LibNftables {
    /// The process-wide instance.
    pub fn get() -> Result<&'static LibNftables, &'static LoadError> {
        static LIB: OnceLock<Result<LibNftables, LoadError>> = OnceLock::new();
        LIB.get_or_init(|| Self::load().map_err(LoadError)).as_ref()
    }

    fn load() -> Result<Self, libloading::Error> {
        // SAFETY: libnftables has no initialisation side effects beyond its own globals, and the
        // signatures below are those of <nftables/libnftables.h> (stable since nftables 0.9).
        unsafe {
            let lib = Library::new(LIBRARY)?;
            fn sym<T: Copy>(lib: &Library, name: &[u8]) -> Result<T, libloading::Error> {
                // SAFETY: the caller names a symbol whose C type matches T.
                let s: Symbol<T> = unsafe { lib.get(name)? };
                Ok(*s)
            }
            Ok(LibNftables {
                ctx_new: sym(&lib, b"nft_ctx_new\0")?,
                ctx_free: sym(&lib, b"nft_ctx_free\0")?,
                buffer_output: sym(&lib, b"nft_ctx_buffer_output\0")?,
                buffer_error: sym(&lib, b"nft_ctx_buffer_error\0")?,
                get_output: sym(&lib, b"nft_ctx_get_output_buffer\0")?,
                get_error: sym(&lib, b"nft_ctx_get_error_buffer\0")?,
                run_cmd: sym(&lib, b"nft_run_cmd_from_buffer\0")?,
                _lib: lib,
            })
        }
    }

    /// A new context. Its netlink socket belongs to the network namespace of the calling thread,
    /// so create it inside the namespace it is meant for.
    pub fn context(&'static self) -> Context {
        let guard = LIBRARY_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // SAFETY: nft_ctx_new returns an owned context or NULL (allocation failure aborts in
        // libnftables' xmalloc, so NULL is not expected); buffering calls only allocate.
        let ptr = unsafe { (self.ctx_new)(NFT_CTX_DEFAULT) };
        assert!(!ptr.is_null(), "nft_ctx_new returned NULL");
        unsafe {
            (self.buffer_output)(ptr);
            (self.buffer_error)(ptr);
        }
        Context {
            lib: self,
            ptr,
            _guard: guard,
        }
    }
}

/// Why libnftables did not run a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("the script contains a NUL byte")]
    Nul,
    /// nft's own words (its parser's or the kernel's), or its return code when it gave none.
    #[error("{}", if message.is_empty() { format!("nft returned {rc}") } else { message.clone() })]
    Refused { rc: c_int, message: String },
}

/// One libnftables context. It holds the library lock for its whole life, so contexts are used
/// one at a time in the process; drop it as soon as its commands have run.
pub struct Context {
    lib: &'static LibNftables,
    ptr: *mut c_void,
    _guard: MutexGuard<'static, ()>,
}

impl Context {
    /// Runs an nft script as one transaction. Returns nft's output.
    pub fn run(&mut self, script: &str) -> Result<String, ScriptError> {
        let script = CString::new(script).map_err(|_| ScriptError::Nul)?;
        // SAFETY: ptr is a live context; the buffers returned are owned by the context and
        // valid until the next command, and are copied out before returning.
        unsafe {
            let rc = (self.lib.run_cmd)(self.ptr, script.as_ptr());
            let out = Self::string((self.lib.get_output)(self.ptr));
            let err = Self::string((self.lib.get_error)(self.ptr));
            if rc == 0 {
                Ok(out)
            } else {
                Err(ScriptError::Refused {
                    rc,
                    message: err.trim().to_string(),
                })
            }
        }
    }

    unsafe fn string(p: *const c_char) -> String {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: libnftables returns NUL-terminated buffers.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: ptr came from nft_ctx_new and is freed once.
        unsafe { (self.lib.ctx_free)(self.ptr) }
    }
}
