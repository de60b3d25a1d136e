//! End-to-end tests of template rendering and lint (conformance against Python jinja2).
