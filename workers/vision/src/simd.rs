//! Runtime choice of instruction set for the hot loops.
//!
//! The kernels are plain Rust written so that compilers vectorise them; each entry point is compiled
//! three times (portable x86-64, AVX2, AVX-512) and the best one the CPU supports is picked once,
//! as OpenCV's dispatcher does. Nothing here changes a result: integer arithmetic is exact.
#![allow(unsafe_code)]

/// The instruction set the kernels run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Portable,
    Avx2,
    Avx512,
}

impl Level {
    /// The best level this CPU supports, unless `AUTOTUNER_VISION_SIMD` (`portable`, `avx2`,
    /// `avx512`) asks for a lower one (for comparisons and tests).
    pub fn detect() -> Level {
        let best = Self::best();
        match std::env::var("AUTOTUNER_VISION_SIMD").as_deref() {
            Ok("portable") => Level::Portable,
            Ok("avx2") if best != Level::Portable => Level::Avx2,
            _ => best,
        }
    }

    /// Every level this CPU can run, lowest first.
    pub fn available() -> Vec<Level> {
        let best = Self::best();
        [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= best)
            .collect()
    }

    fn best() -> Level {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("lzcnt")
            {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("popcnt")
                && std::arch::is_x86_feature_detected!("lzcnt")
            {
                return Level::Avx2;
            }
        }
        Level::Portable
    }
}

impl PartialOrd for Level {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Level {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Defines `pub(crate) fn $name(level, args..)` that runs the `#[inline(always)]` function
/// `$generic` compiled for `level`.
macro_rules! multiversion {
    (fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $generic:path) => {
        #[allow(unsafe_code, clippy::too_many_arguments)]
        pub(crate) fn $name(level: $crate::simd::Level, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,bmi1,bmi2,popcnt,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2,popcnt,lzcnt")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $generic($($arg),*)
                }
                match level {
                    // SAFETY: `Level::detect`/`available` return these levels only when the CPU has
                    // every feature the function was compiled for.
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Portable => {}
                }
            }
            #[allow(unreachable_code)]
            $generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// The CPU's model name as the kernel reports it (`model name` in `/proc/cpuinfo`), to record
/// beside a benchmark's figures: the two machine kinds this project runs on differ twofold in
/// speed. Empty where the kernel does not say.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_default()
}
