//! Wire protocol between the sandbox agent and the controller.
