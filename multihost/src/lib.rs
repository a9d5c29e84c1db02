//! The multihost launcher's pieces: the loopback layout with its up-front checks
//! ([`layout`]), finding leftovers of earlier runs ([`stale`]), and the coordinator
//! ([`coordinator`]). The contract with the hosts (ports, phases, status, start
//! order, command line, restart exit code) is the pipeline runtime's
//! `contract` module, which this crate links; process supervision is
//! `kiln-process`'s.

pub mod coordinator;
pub mod layout;
pub mod stale;
