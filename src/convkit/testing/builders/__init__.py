"""Office documents built in memory, the way Word, LibreOffice and Excel write them, for
template-engine tests (convkit's own and plugins'): ``builders.docx``, ``builders.odf`` and
``builders.xlsx``. Each writes a complete, well-formed package with :mod:`zipfile`, so no test
needs a committed binary."""
