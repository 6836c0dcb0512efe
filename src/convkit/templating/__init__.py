"""What every template engine shares (a library, no hooks): the Jinja sandbox, the render scope
(locale, deadline, image loader), Babel filters, rich content, the compiled-template cache and
the error formatter. Third-party engines import it exactly as the built-ins do."""
