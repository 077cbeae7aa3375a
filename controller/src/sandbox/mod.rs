//! Stage: launcher → **sandbox** → container. The only module that imports
//! bollard: it turns operator configuration into one hardened container per
//! execution, watches it, and removes it.
