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
//! locks anyone out.

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

pub use crate::job::HashError;

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
}

impl Hasher {
    pub fn new(p: HashParams) -> Result<Hasher, HashError> {
        let params = Params::new(p.memory_kib, p.passes, 1, None)
            .map_err(|e| HashError::BadParams(e.to_string()))?;
        Ok(Hasher {
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        })
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
