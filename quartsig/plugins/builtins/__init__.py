"""The built-in profiles, each an ordinary plugin registered by :mod:`quartsig.plugins.loader`.

They use the same public ``@hookimpl`` a third party would, so the plugin path is
exercised on every start-up rather than only when someone installs a plugin.
"""
