//! Password hashing: argon2id, with parameters from the server's configuration.
//!
//! Hashing is deliberately slow, so it runs only on worker threads. The defaults are
//! one of the argon2id settings OWASP's password storage guidance lists as equally
//! strong (7 MiB, 5 passes, 1 lane; its first choice is 19 MiB, 2 passes): the smaller
//! memory stays closer to the CPU caches, so a check is quicker than with the first
//! choice (BENCHMARKS.md), which shortens the time a crowd of clients needs to log
//! back in after a restart, and each hashing thread holds 7 MiB instead of 19 while it
//! works. Operators can change them with `--argon2-memory-kib` / `--argon2-passes`;
//! tests lower them. A stored hash carries its own parameters, so changing them never
//! locks anyone out: a login with a hash of other parameters rehashes the password
//! with the current ones.
//!
//! A stored hash's parameters are not trusted, though (a record written to a shared
//! Redis or imported may ask for anything): before any work, [`Hasher::assess`]
//! refuses a hash whose memory is over [`MAX_STORED_MEMORY_KIB`] or whose work
//! (memory times passes) is over [`MAX_STORED_WORK`], each unless the server's own
//! parameters are larger. Such a login is answered as a wrong password, with no hash
//! computed.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

pub use crate::job::{HashError, MAX_STORED_MEMORY_KIB, MAX_STORED_WORK, StoredHash};

/// argon2id parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB (at least 8).
    pub memory_kib: u32,
    /// Passes over the memory (at least 1).
    pub passes: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams {
            memory_kib: 7 * 1024,
            passes: 5,
        }
    }
}

/// Hashes and checks passwords with fixed parameters.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    params: HashParams,
}

impl Hasher {
    pub fn new(p: HashParams) -> Result<Hasher, HashError> {
        let params = Params::new(p.memory_kib, p.passes, 1, None)
            .map_err(|e| HashError::BadParams(e.to_string()))?;
        Ok(Hasher {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            params: p,
        })
    }

    /// How a stored PHC string compares with this hasher's parameters, without
    /// hashing anything: [`StoredHash::TooCostly`] if it asks for more memory or work
    /// than the caps allow (the larger of the documented caps and this hasher's own),
    /// [`StoredHash::Outdated`] if it is an argon2 hash of other parameters (rehashed
    /// at the next login), [`StoredHash::Current`] otherwise (a string that is no
    /// argon2 hash at all never verifies, at no cost).
    pub fn assess(&self, phc: &str) -> StoredHash {
        let Ok(hash) = PasswordHash::new(phc) else {
            return StoredHash::Current;
        };
        let (Ok(alg), Ok(params)) = (
            Algorithm::try_from(hash.algorithm.as_str()),
            Params::try_from(&hash),
        ) else {
            return StoredHash::Current;
        };
        let own = self.params;
        let (m, t) = (params.m_cost(), params.t_cost());
        let max_memory = MAX_STORED_MEMORY_KIB.max(own.memory_kib);
        let max_work = MAX_STORED_WORK.max(u64::from(own.memory_kib) * u64::from(own.passes));
        if m > max_memory || u64::from(m) * u64::from(t) > max_work {
            return StoredHash::TooCostly {
                memory_kib: m,
                passes: t,
            };
        }
        let version = hash.version.unwrap_or(Version::V0x10 as u32);
        if alg != Algorithm::Argon2id
            || version != Version::V0x13 as u32
            || m != own.memory_kib
            || t != own.passes
            || params.p_cost() != 1
        {
            return StoredHash::Outdated;
        }
        StoredHash::Current
    }

    /// A PHC string (`$argon2id$v=19$m=...`) with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, HashError> {
        self.argon
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Whether `password` matches the PHC string `hash`. A malformed hash never matches.
    pub fn verify(&self, password: &str, hash: &str) -> bool {
        self.argon
            .verify_password(password.as_bytes(), hash)
            .is_ok()
    }
}

impl crate::job::Passwords for Hasher {
    fn hash(&self, password: &str) -> Result<String, HashError> {
        Hasher::hash(self, password)
    }

    fn verify(&self, password: &str, phc: &str) -> bool {
        Hasher::verify(self, password, phc)
    }

    fn assess(&self, phc: &str) -> StoredHash {
        Hasher::assess(self, phc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = Hasher::new(HashParams {
            memory_kib: 64,
            passes: 1,
        })
        .unwrap();
        let phc = h.hash("secret").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("secret"));
        assert!(h.verify("secret", &phc));
        assert!(!h.verify("Secret", &phc));
        assert!(!h.verify("secret", "not a hash"));
        // Hashes carry their own parameters: a differently configured hasher still verifies.
        let other = Hasher::new(HashParams {
            memory_kib: 128,
            passes: 2,
        })
        .unwrap();
        assert!(other.verify("secret", &phc));
        assert_ne!(h.hash("secret").unwrap(), phc, "salts differ");
    }

    /// A PHC string of the password "secret" with its parameters replaced.
    fn with_params(m: u32, t: u32) -> String {
        let cheap = Hasher::new(HashParams {
            memory_kib: 64,
            passes: 1,
        })
        .unwrap();
        let phc = cheap.hash("secret").unwrap();
        let at = phc.find("$m=").unwrap();
        let end = at + phc[at + 1..].find('$').unwrap() + 1;
        format!("{}$m={m},t={t},p=1{}", &phc[..at], &phc[end..])
    }

    #[test]
    fn stored_hashes_over_the_caps_are_refused_before_any_work() {
        let h = Hasher::new(HashParams::default()).unwrap();
        // 64 MiB and a million passes: refused, at once (hashing it would take hours).
        let hostile = with_params(64 * 1024, 1_000_000);
        assert_eq!(
            h.assess(&hostile),
            StoredHash::TooCostly {
                memory_kib: 64 * 1024,
                passes: 1_000_000
            }
        );
        // More memory than the cap, however few passes.
        let big = with_params(64 * 1024 + 8, 1);
        assert!(matches!(h.assess(&big), StoredHash::TooCostly { .. }));
        // At the caps: allowed, and rehashed at the next login.
        assert_eq!(h.assess(&with_params(64 * 1024, 3)), StoredHash::Outdated);
        assert_eq!(h.assess(&with_params(8, 24 * 1024)), StoredHash::Outdated);
        assert!(matches!(
            h.assess(&with_params(8, 24 * 1024 + 1)),
            StoredHash::TooCostly { .. }
        ));
        // Its own parameters are current; OWASP's first choice is another setting.
        assert_eq!(h.assess(&h.hash("x").unwrap()), StoredHash::Current);
        assert_eq!(h.assess(&with_params(19 * 1024, 2)), StoredHash::Outdated);
        // A server configured above the caps accepts hashes of its own parameters.
        let heavy = Hasher::new(HashParams {
            memory_kib: 128 * 1024,
            passes: 4,
        })
        .unwrap();
        assert!(matches!(
            h.assess(&with_params(128 * 1024, 4)),
            StoredHash::TooCostly { .. }
        ));
        assert_eq!(
            heavy.assess(&with_params(128 * 1024, 4)),
            StoredHash::Current
        );
        // What is no argon2 hash costs nothing either way.
        assert_eq!(h.assess("not a hash"), StoredHash::Current);
        assert_eq!(h.assess("$test$0123"), StoredHash::Current);
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert!(
            Hasher::new(HashParams {
                memory_kib: 1,
                passes: 1
            })
            .is_err()
        );
        assert!(
            Hasher::new(HashParams {
                memory_kib: 64,
                passes: 0
            })
            .is_err()
        );
    }
}
