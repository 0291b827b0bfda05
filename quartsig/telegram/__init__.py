"""The Telegram bot: the path a user walks is Telegram first, board second (docs/bot.md)."""
